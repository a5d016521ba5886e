"""The trainers by name (a config's `trainer` field) and the config a command line names.

Shared by `python -m mmjax.train` and `launch/aot_compile.py`, so both accept the same
trainers and the same `--config=FILE[:VARIANTS] --config.KEY=VALUE` syntax.
"""

import importlib
import os

# name -> "module:class"; imported only when picked, so a tokenizer run never loads 4M code.
TRAINERS = {
    "tokenizer": "mmjax.train.tokenizer_trainer:TokenizerTrainer",
    "fourm": "mmjax.train.fourm_trainer:FourMTrainer",
}


def get_trainer(config) -> type:
    """The Trainer class that `config.trainer` names."""
    name = config.get("trainer", None)
    if name not in TRAINERS:
        raise ValueError(
            f"config.trainer must be one of {sorted(TRAINERS)}, got {name!r}; set it in the "
            "config file or with --config.trainer=NAME"
        )
    module, cls = TRAINERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_config(spec: str, overrides=(), prog: str = "mmjax"):
    """(config, {key: value}) from `FILE[:VARIANTS]` and `--config.KEY=VALUE` arguments.

    The overrides are applied (and their values typed) as ml_collections' config flags do,
    on flag values of their own, so nothing global is parsed or defined.
    """
    from absl import flags
    from ml_collections import config_flags

    path = spec.split(":", 1)[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} (from --config={spec}) does not exist")
    overrides = list(overrides)
    bad = [a for a in overrides if not a.startswith("--config.")]
    if bad:
        raise ValueError(f"unexpected arguments {bad}; config overrides read --config.KEY=VALUE")
    argv = [prog, f"--config={spec}", *overrides]
    flag_values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file(
        "config", None, "experiment config file", flag_values=flag_values, sys_argv=argv
    )
    try:
        flag_values(argv)
    except flags.Error as e:
        raise ValueError(f"--config={spec} {' '.join(overrides)}: {e}") from e
    except (AttributeError, KeyError) as e:  # an override of a field the config lacks
        raise ValueError(f"{spec}: no config field {e} (overrides: {' '.join(overrides)})") from e
    values = config_flags.get_override_values(flag_values["config"])
    return holder.value, dict(values)


def add_config_argument(p) -> None:
    """The `--config=FILE[:VARIANTS]` option that `load_config` reads, on argparse parser `p`."""
    import argparse

    p.add_argument(
        "--config",
        required=True,
        default=argparse.SUPPRESS,
        metavar="FILE[:VARIANTS]",
        help="experiment config file with get_config(arg), and its variants (required)",
    )
