"""FourM size presets and `build_fourm(model_config, registry)`.

base / large / xlarge follow 4M's trunk shapes (Mizrahi et al. 2023, Table: 4M-B 12+12 layers
at width 768, 4M-L 24+24 at 1024, 4M-XL 24+24 at 2048; head_dim 64). The SwiGLU hidden width
is mlp_ratio 4 scaled by 2/3 (as in 4M), rounded up to a multiple of 128 for the TPU MXU and
for even tensor-parallel splits: 2048 (base), 2816 (large), 5504 (xlarge). Trunk = encoder and
decoder blocks, their final norms and the decoder context projection; with this choice the
trunk has 198.8M / 718.4M / 2.836B parameters against the published 198M / 705M / 2.8B
(+0.4% / +1.9% / +1.3%). tiny and small are for CPU runs and tests.
"""

import dataclasses
from collections.abc import Mapping

import jax.numpy as jnp

from mmjax.fourm.modalities import Registry
from mmjax.fourm.model import FourM

PRESETS = {
    "tiny": dict(width=128, encoder_depth=2, decoder_depth=2, num_heads=4),
    "small": dict(width=384, encoder_depth=6, decoder_depth=6, num_heads=6),
    "base": dict(width=768, encoder_depth=12, decoder_depth=12, num_heads=12),
    "large": dict(width=1024, encoder_depth=24, decoder_depth=24, num_heads=16),
    "xlarge": dict(width=2048, encoder_depth=24, decoder_depth=24, num_heads=32),
}

# 4M paper, trunk parameters (encoder + decoder, without the modality embeddings and heads).
PUBLISHED_TRUNK_PARAMS = {"base": 198e6, "large": 705e6, "xlarge": 2.8e9}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _dtype(key: str, value):
    if value is None or not isinstance(value, str):
        return value
    if value not in _DTYPES:
        raise ValueError(f"build_fourm: {key} must be one of {sorted(_DTYPES)}, got {value!r}")
    return _DTYPES[value]


def build_fourm(model_config, registry: Registry) -> FourM:
    """FourM from a config mapping: an optional `size` (a PRESETS name) plus any FourM field
    (they override the preset). dtype / param_dtype may be strings ('bfloat16');
    attention_impl "" is None (jax picks).

    >>> build_fourm({"size": "base"}, registry).width
    768
    """
    if hasattr(model_config, "to_dict"):
        model_config = model_config.to_dict()
    if not isinstance(model_config, Mapping):
        raise TypeError(f"build_fourm: config must be a mapping, got {type(model_config)}")
    kwargs = dict(model_config)
    size = kwargs.pop("size", None)
    if size is not None:
        if size not in PRESETS:
            raise ValueError(f"build_fourm: size must be one of {tuple(PRESETS)}, got {size!r}")
        kwargs = {**PRESETS[size], **kwargs}
    fields = {f.name for f in dataclasses.fields(FourM) if f.init} - {"parent", "name", "registry"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"build_fourm: unknown key(s) {unknown}; expected 'size' or some of {sorted(fields)}"
        )
    for key in ("dtype", "param_dtype"):
        if key in kwargs:
            kwargs[key] = _dtype(key, kwargs[key])
    if kwargs.get("attention_impl") == "":  # a config's "": let jax pick
        kwargs["attention_impl"] = None
    if kwargs.get("sharding_rules") is not None:  # lists from a config -> hashable tuples
        kwargs["sharding_rules"] = tuple(
            (n, tuple(a) if isinstance(a, list | tuple) else a) for n, a in kwargs["sharding_rules"]
        )
    return FourM(registry=registry, **kwargs)
