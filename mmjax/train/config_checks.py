"""Range checks of the numeric config fields the trainers read, run before anything is built:
a wrong value (`total_steps=-3`, a NaN learning rate) is a `ConfigError` naming the field, not
a run that trains on it. One table for every config (configs/*.py); a field a config lacks is
skipped, and no field anywhere may be NaN."""

import math
import numbers


class ConfigError(ValueError):
    """A config value outside its range; the message names the field and what was expected."""


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def integer(minimum: int, also=()):
    """An integer >= minimum (or one of `also`, e.g. -1 for "the rest")."""
    alt = "".join(f" or {a}" for a in also)

    def rule(v):
        ok = _is_int(v) and (v >= minimum or v in also)
        return None if ok else f"an integer >= {minimum}{alt}"

    return rule


def real(low: float = -math.inf, high: float = math.inf, low_open=False, high_open=False):
    """A finite number in the interval (bounds open or closed as asked)."""
    if high == math.inf:
        expect = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        expect = (
            f"a finite number in {'(' if low_open else '['}{low:g}, {high:g}"
            f"{')' if high_open else ']'}"
        )

    def rule(v):
        if not _is_real(v) or not math.isfinite(v):
            return expect
        inside = (low < v if low_open else low <= v) and (v < high if high_open else v <= high)
        return None if inside else expect

    return rule


def each(rule):
    """A tuple or list whose every element obeys `rule`."""

    def check(v):
        if isinstance(v, (tuple, list)):
            return f"a sequence of which each is {rule(None)}" if any(map(rule, v)) else None
        return f"a sequence of which each is {rule(None)}"

    return check


def interval(high: float = math.inf):
    """(low, high) with 0 < low <= high <= `high`."""
    expect = "a pair (min, max) with 0 < min <= max" + (f" <= {high:g}" if high < math.inf else "")

    def rule(v):
        if not isinstance(v, (tuple, list)) or len(v) != 2:
            return expect
        lo, hi = v
        ok = all(_is_real(x) and math.isfinite(x) for x in v) and 0 < lo <= hi <= high
        return None if ok else expect

    return rule


def mapping(rule, single_ok: bool = False):
    """A dict of name -> value obeying `rule` (or, with single_ok, one such value for all)."""

    def check(v):
        if single_ok and not hasattr(v, "items"):
            return rule(v)
        if not hasattr(v, "items"):
            return f"a dict of name -> {rule(None)}"
        return f"a dict of name -> {rule(None)}" if any(map(rule, dict(v).values())) else None

    return check


_POSITIVE, _NON_NEGATIVE = real(0, low_open=True), real(0)
_BETA = real(0, 1, high_open=True)  # Adam's moment decays, EMA decays
_QUANTIZER = {
    "codebook_size": integer(1),
    "dim": integer(1),
    "depth": integer(1),
    "levels": each(integer(2)),
    "scales": each(integer(1)),  # msrvq: the pyramid's sides
    "entropy_weight": _NON_NEGATIVE,
    "dead_threshold": _NON_NEGATIVE,
}

# dotted field -> rule (None when the value is fine, else what was expected).
RULES = {
    "seed": integer(0),
    "total_steps": integer(1),
    "total_tokens": integer(0),  # 0 = total_steps decides
    "grad_accum_steps": integer(1),
    "log_every": integer(1),
    "max_bad_steps": integer(1),
    "data.batch_size": integer(1),
    "data.seed": integer(0),
    "data.resolution": integer(1),
    "data.num_examples": integer(1),
    "data.validation_fraction": real(0, 1, high_open=True),
    "data.crop_scale": interval(1.0),
    "data.crop_ratio": interval(),
    "data.crop_size": integer(0),  # 0 = no crop
    "data.flip_prob": real(0, 1),
    "data.worker_count": integer(0),
    "data.prefetch": integer(0),
    "data.max_lengths": mapping(integer(1)),
    "condition.max_length": integer(1),  # next-scale: condition tokens
    "condition.dropout": real(0, 1, high_open=True),  # next-scale: unconditional share
    "masking.input_budget": integer(1),
    "masking.target_budget": integer(1),
    "masking.span_mean_length": _POSITIVE,
    "masking.max_input_tokens": mapping(integer(0), single_ok=True),
    "masking.max_target_tokens": mapping(integer(0), single_ok=True),
    "model.channels": integer(1),
    "model.channel_mult": each(integer(1)),
    "model.z_channels": integer(1),
    "model.z_dim": integer(1),
    "model.patch_size": integer(1),
    "model.image_size": integer(1),
    "model.num_registers": integer(1),  # 1D tokenizers: K, the most tokens per image
    "model.head_chunk": integer(1),
    **{f"quantizer.{k}": r for k, r in _QUANTIZER.items()},
    **{f"quantizer.base.{k}": r for k, r in _QUANTIZER.items()},
    "loss.perceptual_weight": _NON_NEGATIVE,
    "loss.gan_weight": _NON_NEGATIVE,
    "loss.gan_start": integer(0),
    "loss.adaptive_max_weight": _POSITIVE,
    "discriminator.channels": integer(1),
    "discriminator.num_layers": integer(1),
    "discriminator.learning_rate": _POSITIVE,
    "discriminator.b1": _BETA,
    "discriminator.b2": _BETA,
    "optimizer.learning_rate": _POSITIVE,
    "optimizer.warmup_steps": integer(0),
    "optimizer.warmup_tokens": integer(0),  # 0 = warmup_steps decides
    "optimizer.end_lr_factor": real(0, 1),
    "optimizer.b1": _BETA,
    "optimizer.b2": _BETA,
    "optimizer.weight_decay": _NON_NEGATIVE,
    "optimizer.grad_clip": _NON_NEGATIVE,  # 0 = no clipping
    "optimizer.ema_decay": _BETA,  # 0 = no EMA copy of the params
    "mesh.data": integer(1, also=(-1,)),
    "mesh.fsdp": integer(1, also=(-1,)),
    "mesh.tensor": integer(1, also=(-1,)),
    "mesh.dcn_data": integer(1),
    "mesh.dcn_fsdp": integer(1),
    "mesh.dcn_tensor": integer(1),
    "checkpoint.every": integer(1),
    "checkpoint.keep": integer(1),
    "eval.every": integer(1),
    "eval.num_images": integer(1),
    "eval.usage_images": integer(0),  # 0 = off
    "eval.num_examples": integer(1),
    "eval.batch_size": integer(1),
}

_MISSING = object()


def _lookup(config, key: str):
    node = config
    for part in key.split("."):
        if not hasattr(node, "items") or part not in node:
            return _MISSING
        node = node[part]
    return node


def _nan_fields(node, prefix: str):
    """Dotted names of the NaN values anywhere under `node`."""
    if hasattr(node, "items"):
        for k, v in node.items():
            yield from _nan_fields(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, (tuple, list)):
        for i, v in enumerate(node):
            yield from _nan_fields(v, f"{prefix}[{i}]")
    elif _is_real(node) and math.isnan(node):
        yield prefix


def config_problems(config, section: str | None = None) -> list[str]:
    """'config.FIELD must be ..., got VALUE' for each field out of range. `config` is a whole
    config, or (with `section`, e.g. "optimizer") that section of one."""
    problems, seen = [], set()
    for key, rule in RULES.items():
        if section is not None:
            if not key.startswith(section + "."):
                continue
            value = _lookup(config, key[len(section) + 1 :])
        else:
            value = _lookup(config, key)
        if value is _MISSING:
            continue
        expected = rule(value)
        if expected:
            shown = value.to_dict() if hasattr(value, "to_dict") else value
            problems.append(f"config.{key} must be {expected}, got {shown!r}")
            seen.add(key)
    prefix = section or ""
    for key in _nan_fields(config, prefix):
        if key not in seen:
            problems.append(f"config.{key} must be a number, got nan")
    return problems


def check_config(config, section: str | None = None) -> None:
    """Raises `ConfigError` listing every field of `config` (or of its `section`) that is out
    of range (see RULES); returns None when all are fine."""
    problems = config_problems(config, section)
    if problems:
        raise ConfigError("; ".join(problems))


def check_total_steps(total_steps) -> None:
    """The step count a trainer is built for (the config's, or one given to it)."""
    expected = RULES["total_steps"](total_steps)
    if expected:
        raise ConfigError(f"total_steps must be {expected}, got {total_steps!r}")
