"""The trainers by name (a config's `trainer` field) and the config a command line names.

Shared by `python -m mmjax.train` and `launch/aot_compile.py`, so both accept the same
trainers and the same `--config=FILE[:VARIANTS] --config.KEY=VALUE` syntax.
"""

import importlib
import os
import re

# name -> "module:class"; imported only when picked, so a tokenizer run never loads 4M code.
TRAINERS = {
    "tokenizer": "mmjax.train.tokenizer_trainer:TokenizerTrainer",
    "fourm": "mmjax.train.fourm_trainer:FourMTrainer",
    "nextscale": "mmjax.train.nextscale_trainer:NextScaleTrainer",
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
        raise ValueError(_unknown_field(spec, overrides, e)) from e
    values = config_flags.get_override_values(flag_values["config"])
    return holder.value, dict(values)


def _unknown_field(spec: str, overrides, error) -> str:
    """One line for ml_collections' error about an override of a field the config lacks:
    'no config field NAME in SPEC (from --config.X=...). Did you mean "OTHER"?'."""
    texts = []  # the KeyError with the suggestion may sit under an AttributeError
    while error is not None:
        arg = error.args[0] if error.args else error
        texts.append(str(arg.args[0] if isinstance(arg, BaseException) and arg.args else arg))
        error = error.__context__
    name = texts[0].partition("\n")[0].strip().strip("'\"")
    suggestion = next(filter(None, (re.search(r'Did you mean "([^"]+)"', t) for t in texts)), None)
    field = rf"[.]{re.escape(name)}(?=[.=]|$)"
    culprit = [a for a in overrides if re.search(field, a)]
    msg = f"no config field {name!r} in {spec}"
    msg += f" (from {culprit[0]})" if culprit else f" (overrides: {' '.join(overrides)})"
    if suggestion and culprit:
        fixed = re.sub(field, "." + suggestion[1], culprit[0], count=1)
        return msg + f'. Did you mean "{suggestion[1]}" ({fixed})?'
    return msg + (f'. Did you mean "{suggestion[1]}"?' if suggestion else "")


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
