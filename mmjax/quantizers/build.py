"""`build_quantizer(config)`: any quantizer from a ConfigDict (or dict) with a `type`."""

import dataclasses
from collections.abc import Mapping

import flax.linen as nn

from mmjax.quantizers.fsq import FSQ, FSQ_LEVELS
from mmjax.quantizers.lfq import LFQ
from mmjax.quantizers.multiscale import MultiScaleResidualQuantizer
from mmjax.quantizers.residual import ResidualQuantizer
from mmjax.quantizers.vq import VectorQuantizer

QUANTIZERS = {
    "vq": VectorQuantizer,
    "fsq": FSQ,
    "lfq": LFQ,
    "bsq": LFQ,
    "rvq": ResidualQuantizer,
    "msrvq": MultiScaleResidualQuantizer,
}
_NESTED = ("rvq", "msrvq")  # these take a `base` quantizer config


def _as_dict(config) -> dict:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"build_quantizer: config must be a ConfigDict or dict, got {type(config)}")


def _tuples(value):
    return tuple(value) if isinstance(value, list) else value


def build_quantizer(config) -> nn.Module:
    """Builds a quantizer module.

    `type` is one of vq, fsq, lfq, bsq (= LFQ with spherical=True), rvq, msrvq; the other
    keys are the module's fields. rvq/msrvq take the base quantizer's config as `base`.
    FSQ accepts `bits` (8, 10, 12, 14, 16) instead of `levels` for the paper's tables.

    >>> build_quantizer({"type": "fsq", "bits": 10}).levels
    (8, 5, 5, 5)
    """
    kwargs = _as_dict(config)
    kind = kwargs.pop("type", None)
    if kind not in QUANTIZERS:
        raise ValueError(f"build_quantizer: type must be one of {tuple(QUANTIZERS)}, got {kind!r}")
    cls = QUANTIZERS[kind]
    if kind in _NESTED:
        if "base" not in kwargs:
            raise ValueError(f"build_quantizer: type={kind!r} needs a `base` quantizer config")
        kwargs["quantizer"] = build_quantizer(kwargs.pop("base"))
    if kind == "bsq":
        kwargs["spherical"] = True
    if kind == "fsq" and "bits" in kwargs:
        bits = kwargs.pop("bits")
        if bits not in FSQ_LEVELS:
            raise ValueError(f"build_quantizer: fsq bits must be one of {tuple(FSQ_LEVELS)}")
        kwargs.setdefault("levels", FSQ_LEVELS[bits])
    fields = {f.name for f in dataclasses.fields(cls) if f.init} - {"parent", "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"build_quantizer: unknown key(s) {unknown} for type={kind!r} ({cls.__name__}); "
            f"expected some of {sorted(fields)}"
        )
    return cls(**{k: _tuples(v) for k, v in kwargs.items()})
