"""A run's resolved config as recorded in WORKDIR/config.json, and how a resumed run's config
differs from it: which fields change the train state's structure (refused, with the flags that
would resume) and which only change the run."""

import json
import shlex

import jax

CONFIG_FILE = "config.json"

# Config fields a resumed run may not change: they decide the shapes and the tree of the
# params, the optimizer state, the quantizer statistics or the discriminator, so the
# checkpoint could not be restored into them (or would be read as another model). A name
# covers its sub-fields. Everything else (total_steps, log_every, eval.*, checkpoint.*, data
# paths, batch size, learning rate, mesh, ...) may change; the change is printed.
STRUCTURE_FIELDS = (
    "trainer",
    "modality",  # tokenizer: the codec and the channels
    "modalities",  # 4M: the modality registry
    "model",
    "quantizer",
    "discriminator",
    "data.resolution",
    "data.modalities",  # 4M: which modalities of the data the registry holds
    "data.max_lengths",  # 4M: sequence lengths of the registry
    "optimizer.decay",  # the weight-decay mask is part of the optimizer state's tree
)
# Fields whose on/off (zero or not) changes the state's tree, but whose value may change.
TOGGLE_FIELDS = (
    "optimizer.ema_decay",  # the EMA copy of the params
    "optimizer.grad_clip",  # the clipping transform in the optimizer chain
    "loss.gan_weight",  # the discriminator and its optimizer state
)
# The parts of the train state, and the config fields that decide whether (and how) a run has
# them: what a resume that does not fit its checkpoint is told to look at.
STATE_PARTS = {
    "params": "model, quantizer, modality and modalities shape it",
    "stats": "the quantizer config shapes it",
    "opt_state": "optimizer.grad_clip (on or off) and optimizer.decay shape it",
    "ema_params": "optimizer.ema_decay > 0 adds it",
    "disc_params": "loss.gan_weight > 0 adds it",
    "disc_opt_state": "loss.gan_weight > 0 adds it",
}


def to_dict(c) -> dict:
    return c.to_dict() if hasattr(c, "to_dict") else dict(c)


def config_json(config) -> dict:
    """The config as plain JSON values (FieldReferences resolved, tuples as lists)."""
    return json.loads(json.dumps(to_dict(config), sort_keys=True, default=str))


def _flatten(d, prefix: str = "") -> dict:
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


class _Missing:  # a field one of two configs lacks
    def __repr__(self):
        return "<not set>"


_MISSING = _Missing()


def _on(value) -> bool:
    return value is not _MISSING and bool(value)


def _covered(key: str, fields) -> bool:
    return any(key == f or key.startswith(f + ".") for f in fields)


# Fields added to the configs after runs were recorded without them: a run that lacks one
# ran with this value, so resuming it with that value is no change.
ADDED_FIELDS = {
    "model.trunk": "vit",  # the 1D tokenizer's trunk (configs/tokenizer_1d.py)
}


def differences(stored: dict, given: dict) -> list[tuple[str, object, object]]:
    """(key, stored value, given value) of each field that differs, in key order; a field of
    ADDED_FIELDS that the stored config lacks reads as its value there."""
    a, b = _flatten(stored), _flatten(given)
    keys = sorted(set(a) | set(b))
    pairs = [(k, a.get(k, ADDED_FIELDS.get(k, _MISSING)), b.get(k, _MISSING)) for k in keys]
    return [(k, old, new) for k, old, new in pairs if old != new]


def is_structural(key: str, old, new) -> bool:
    toggled = key in TOGGLE_FIELDS and _on(old) != _on(new)
    return toggled or _covered(key, STRUCTURE_FIELDS)


def config_changes(stored: dict, given: dict) -> tuple[list[str], list[str]]:
    """(structural, other): the fields that differ between two `config_json` dicts, each as
    'key: stored -> given'; structural ones are those of STRUCTURE_FIELDS, and the
    TOGGLE_FIELDS turned on or off."""
    structural, other = [], []
    for key, old, new in differences(stored, given):
        line = f"{key}: {old!r} -> {new!r}"
        (structural if is_structural(key, old, new) else other).append(line)
    return structural, other


def _cli_value(value) -> str:
    """A JSON config value as `--config.KEY=VALUE` reads it back (lists as tuples)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        items = [_cli_value(v) if not isinstance(v, str) else repr(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    return repr(value)


def resume_advice(diffs: list[tuple[str, object, object]], workdir) -> str:
    """What to do about config fields that keep a run from resuming: a new workdir, or the
    stored values as command-line overrides."""
    flags = [
        shlex.quote(f"--config.{k}={_cli_value(old)}") for k, old, _ in diffs if old is not _MISSING
    ]
    absent = [k for k, old, _ in diffs if old is _MISSING]
    advice = "Use a new workdir for the new config"
    if flags:
        advice += f", or resume {workdir} with the stored values: {' '.join(flags)}"
    if absent:
        advice += f" (the stored config has no {', '.join(absent)})"
    return advice + "."


def state_leaves(tree) -> dict[str, set]:
    """Top-level field -> {(sub-path, shape)} of the leaves of a train state (or of Orbax's
    metadata of one); a field that is None or empty has no entry."""
    out: dict[str, set] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path]
        shape = tuple(getattr(leaf, "shape", ()) or ())
        out.setdefault(names[0], set()).add(("/".join(names[1:]), shape))
    return out
