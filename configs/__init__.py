"""The experiment configs, one file per experiment with `get_config(arg)`: installed as the
package `mmjax.configs` (setup.py maps it to this folder), so config files and Python callers
import `mmjax.configs.common` and `from mmjax.configs import tokenizer_rgb` from anywhere."""

import importlib


def load(name: str, arg: str | None = None):
    """configs/<name>.py's get_config(arg), e.g. load("tokenizer_depth", "quick")."""
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise ValueError(f"no config {name!r} in mmjax.configs") from None
    return module.get_config(arg)
