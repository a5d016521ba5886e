"""The command lines: every CLI's --help (rc 0, a description that is a full sentence, a help
string and a default on every option), the trainer registry, and the config the training
command line builds from a file and overrides."""

import glob
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from mmjax.train.registry import TRAINERS, get_trainer, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIS = [
    ["-m", "mmjax.train"],
    ["-m", "mmjax.demo"],
    ["-m", "mmjax.demo.quantizers"],
    ["-m", "mmjax.pretokenize"],
    ["-m", "mmjax.data.scenes"],
    ["-m", "mmjax.fourm.params"],
    ["launch/aot_compile.py"],
    *[[os.path.relpath(p, ROOT)] for p in sorted(glob.glob(os.path.join(ROOT, "benchmarks/*.py")))],
]


def _help_parts(text: str) -> tuple[str, dict]:
    """(description, {option: its help text}) of an argparse --help output."""
    _, _, rest = text.partition("\n\n")  # after the usage lines
    description, _, rest = rest.partition("\n\n")
    assert rest.startswith("options:"), f"no description before the options:\n{text}"
    options, current = {}, None
    for line in rest.split("\n\n")[0].splitlines()[1:]:
        m = re.match(r"  (-\S.*?)(?:\s{2,}(.*))?$", line)
        if m:
            current = m[1]
            options[current] = m[2] or ""
        else:
            options[current] += " " + line.strip()
    return " ".join(description.split()), options


@pytest.mark.parametrize("cli", CLIS, ids=lambda argv: argv[-1])
def test_help_shows_a_description_and_every_option_with_its_default(cli):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    out = subprocess.run(
        [sys.executable, *cli, "--help"], capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    description, options = _help_parts(out.stdout)
    assert description.endswith(".") and not description[0].islower(), description
    assert len(description.split()) >= 6, description
    options.pop("-h, --help")
    assert options, out.stdout
    for option, text in options.items():
        shown = re.search(r"\(default: .+\)|\(required\)", text)
        assert shown, f"{cli}: {option} shows no default: {text!r}"
        assert text[: shown.start()].strip(), f"{cli}: {option} has no help text"


def test_the_registry_names_the_trainers_and_refuses_others():
    from mmjax.train.fourm_trainer import FourMTrainer
    from mmjax.train.nextscale_trainer import NextScaleTrainer
    from mmjax.train.tokenizer_trainer import TokenizerTrainer

    assert get_trainer(ml_collections.ConfigDict({"trainer": "tokenizer"})) is TokenizerTrainer
    assert get_trainer({"trainer": "fourm"}) is FourMTrainer
    assert get_trainer({"trainer": "nextscale"}) is NextScaleTrainer
    assert sorted(TRAINERS) == ["fourm", "nextscale", "tokenizer"]
    for bad in ({"trainer": "gpt"}, {}):
        with pytest.raises(ValueError, match=r"config.trainer must be one of \['fourm', "):
            get_trainer(bad)


CONFIG = """
import ml_collections


def get_config(arg=None):
    return ml_collections.ConfigDict(
        dict(trainer="tokenizer", total_steps=100 if arg == "quick" else 1000,
             model=dict(size="tiny", levels=(8, 5)), eval=dict(every=10))
    )
"""


def test_load_config_applies_variants_and_typed_overrides(tmp_path):
    path = tmp_path / "toy_config.py"
    path.write_text(CONFIG)
    config, changed = load_config(f"{path}:quick")
    assert config.total_steps == 100 and changed == {}
    config, changed = load_config(
        str(path), ["--config.total_steps=7", "--config.model.levels=(4,4,4)"]
    )
    assert config.total_steps == 7 and config.model.levels == (4, 4, 4)
    assert changed == {"total_steps": 7, "model.levels": (4, 4, 4)}
    with pytest.raises(FileNotFoundError, match=r"config file .*missing\.py"):
        load_config(str(tmp_path / "missing.py"))
    with pytest.raises(ValueError, match="no config field"):
        load_config(str(path), ["--config.model.depth=3"])
    with pytest.raises(ValueError, match=r"unexpected arguments \['--steps=3'\]"):
        load_config(str(path), ["--steps=3"])
    with pytest.raises(ValueError, match="total_steps=ten"):
        load_config(str(path), ["--config.total_steps=ten"])


def test_train_command_line_refuses_bad_arguments_before_training(tmp_path, capsys):
    from mmjax.train.__main__ import main

    path = tmp_path / "toy_config.py"
    path.write_text(CONFIG)
    for argv, message in (
        ([f"--config={path}"], "the following arguments are required: --workdir"),
        ([f"--config={path}", "--workdir=w", "--steps=3"], "unexpected arguments"),
        ([f"--config={path}", "--workdir=w", "--config.trainer=gpt"], "config.trainer must be"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err
