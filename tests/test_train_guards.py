"""What keeps a training run from a silent wrong result: a step whose update would be non-finite
is skipped; a non-finite state is never checkpointed or exported; every numeric config field is
range-checked before anything is built (the message names the field); a resume that does not
fit its checkpoint names the config fields that differ and the values that would resume; and
`python -m mmjax.train` reports each of these as one line (the traceback only with --verbose)."""

import json
import math
import os

import jax
import ml_collections
import numpy as np
import optax
import pytest

from mmjax.configs import load
from mmjax.train import CheckpointError, config_record
from mmjax.train import __main__ as train_main
from mmjax.train.config_checks import RULES, ConfigError, check_config, config_problems
from mmjax.train.loop import NonFiniteStateError
from tests.test_configs import VARIANTS
from tests.test_train_loop import Toy, _config, _Data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _steps_saved(workdir) -> list[int]:
    ckpts = workdir / "checkpoints"
    return (
        sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() else []
    )


class NanUpdates(Toy):
    """The toy whose optimizer turns finite gradients into NaN updates (what a NaN learning
    rate did before the config check)."""

    def __init__(self, config, workdir=None):
        super().__init__(config, workdir)
        self.tx = optax.sgd(float("nan"))


class NanInit(Toy):
    """The toy whose initial weights hold a NaN: no step can fix them."""

    def _init_state(self, key, batch):
        state = super()._init_state(key, batch)
        return state.replace(params={"w": state.params["w"].at[2].set(np.nan)})


# -- the non-finite guard ----------------------------------------------------------------------


def test_a_non_finite_update_is_skipped_and_changes_nothing():
    trainer = NanUpdates(_config())
    batch = trainer._global_batch(next(_Data()))
    state = trainer.init_state(batch)
    before = jax.device_get(state)
    state, metrics = trainer.jit_train_step()(state, batch, jax.random.key(0))
    # loss and gradients are finite: only the update is not
    assert np.isfinite(float(metrics["loss"]))
    after = jax.device_get(state)
    for name in ("params", "opt_state", "ema_params"):
        jax.tree.map(np.testing.assert_array_equal, getattr(after, name), getattr(before, name))
    assert int(after.step) == 1 and int(after.skipped) == 1 and int(after.bad_streak) == 1


def test_a_run_whose_every_step_was_skipped_exports_nothing(tmp_path):
    trainer = NanUpdates(_config(steps=3, max_bad=100), str(tmp_path))
    with pytest.raises(NonFiniteStateError, match=r"every one of the 3 steps was skipped"):
        trainer.run()
    assert not hasattr(trainer, "final_state")  # Toy's _export was never called


def test_a_non_finite_state_is_never_checkpointed_or_exported(tmp_path):
    config = _config(steps=4, max_bad=100, **{"checkpoint.every": 2})
    trainer = NanInit(config, str(tmp_path))
    with pytest.raises(NonFiniteStateError, match=r"^step 2: .* non-finite values in params/w; "):
        trainer.run()
    assert _steps_saved(tmp_path) == []
    assert not hasattr(trainer, "final_state")
    # export() called directly refuses too, naming the leaf
    state = trainer.init_state(trainer._global_batch(next(_Data())))
    with pytest.raises(NonFiniteStateError, match=r"params/w; not writing the export"):
        trainer.export(state)


# -- config checks -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_shipped_config_passes_the_checks(name):
    for variant in VARIANTS[name]:
        assert config_problems(load(name, variant or None)) == [], (name, variant)


def _bad_value(value):
    """A value that every RULES rule refuses, of the type of `value`."""
    if isinstance(value, float):
        return math.nan
    if isinstance(value, int):
        return -5  # every integer rule is >= 0 (or -1 for mesh axes)
    if isinstance(value, tuple):
        return (-5,)  # a wrong length for pairs, a bad element for sequences
    if isinstance(value, ml_collections.ConfigDict):
        return ml_collections.ConfigDict({"x": -5})
    raise AssertionError(f"no bad value for {value!r}")


def _set(config, key, value):
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


def _configs():
    return {
        spec: load(*spec.split(":"))
        for spec in (
            "tokenizer_rgb:quantizer=rvq,gan",  # rvq's base quantizer, the discriminator
            "tokenizer_depth:quantizer=lfq",  # z_channels
            "tokenizer_normals:quantizer=vq,model=vit",
            "tokenizer_semseg:quantizer=bsq,model=vit",  # z_dim
            "demo_tokenizer:modality=rgb",  # fsq levels, channels, channel_mult
            "fourm:quick",
            "tokenizer_1d:quick",  # image_size, patch_size, num_registers
            "tokenizer_rgb:quantizer=msrvq",  # scales
            "nextscale:quick",  # condition
        )
    }


def test_each_rule_refuses_a_bad_value_and_names_the_field():
    covered = set()
    for spec, config in _configs().items():
        for key in RULES:
            node = config
            try:
                for part in key.split("."):
                    node = node[part]
            except KeyError:
                continue
            bad = ml_collections.ConfigDict(config.to_dict())
            _set(bad, key, _bad_value(node))
            problems = config_problems(bad)
            assert any(p.startswith(f"config.{key} must be ") for p in problems), (spec, key)
            covered.add(key)
    # quantizer.base.*: only rvq's vq base is shipped (no levels, dim, depth, entropy_weight)
    missing = {k for k in RULES if k not in covered and not k.startswith("quantizer.base.")}
    assert not missing, missing


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("total_steps", -3, "config.total_steps must be an integer >= 1, got -3"),
        ("optimizer.learning_rate", math.nan, "config.optimizer.learning_rate must be a finite"),
        ("optimizer.learning_rate", math.inf, "config.optimizer.learning_rate must be a finite"),
        ("optimizer.learning_rate", 0.0, "learning_rate must be a finite number > 0, got 0.0"),
        ("optimizer.b2", 1.0, "config.optimizer.b2 must be a finite number in [0, 1), got 1.0"),
        ("optimizer.ema_decay", 1.0, "config.optimizer.ema_decay must be a finite number in [0"),
        ("optimizer.end_lr_factor", 1.5, "config.optimizer.end_lr_factor must be a finite"),
        ("data.batch_size", 0, "config.data.batch_size must be an integer >= 1, got 0"),
        ("data.resolution", 0, "config.data.resolution must be an integer >= 1, got 0"),
        ("data.crop_scale", (0.5, 2.0), "config.data.crop_scale must be a pair (min, max)"),
        ("checkpoint.keep", 0, "config.checkpoint.keep must be an integer >= 1, got 0"),
        ("eval.every", 0, "config.eval.every must be an integer >= 1, got 0"),
        ("mesh.data", -2, "config.mesh.data must be an integer >= 1 or -1, got -2"),
    ],
)
def test_the_tokenizer_trainer_refuses_an_out_of_range_field_before_building(
    tmp_path, key, value, message
):
    from mmjax.train.tokenizer_trainer import TokenizerTrainer

    config = load("tokenizer_rgb", "quick")
    _set(config, key, value)
    with pytest.raises(ConfigError) as e:
        TokenizerTrainer(config, str(tmp_path / "run"))
    assert message in str(e.value)
    assert not (tmp_path / "run").exists()


def test_the_4m_trainer_and_the_optimizer_check_their_fields():
    from mmjax.train.fourm_trainer import FourMTrainer
    from mmjax.train.optimizer import build_optimizer

    config = load("fourm", "quick")
    config.masking.input_budget = 0
    config.total_tokens = 1000  # checked before the token schedule divides by the budgets
    with pytest.raises(ConfigError, match=r"config.masking.input_budget must be an integer >= 1"):
        FourMTrainer(config)
    optimizer = load("fourm", "quick").optimizer
    optimizer.learning_rate = math.nan
    with pytest.raises(ConfigError, match=r"^config.optimizer.learning_rate must be a finite"):
        build_optimizer(optimizer, 10)
    with pytest.raises(ConfigError, match=r"total_steps must be an integer >= 1, got 0"):
        build_optimizer(load("fourm", "quick").optimizer, 0)


def test_a_nan_anywhere_is_refused_and_every_problem_is_listed():
    config = _config(**{"optimizer.momentum_x": math.nan, "total_steps": 0, "log_every": -1})
    with pytest.raises(ConfigError) as e:
        check_config(config)
    text = str(e.value)
    for part in (
        "config.optimizer.momentum_x must be a number, got nan",
        "config.total_steps must be an integer >= 1, got 0",
        "config.log_every must be an integer >= 1, got -1",
    ):
        assert part in text, text


# -- resuming with a changed config --------------------------------------------------------------


def _first_run(workdir, ema=0.0):
    Toy(_config(steps=2, **{"checkpoint.every": 2, "optimizer.ema_decay": ema}), str(workdir)).run()


def test_a_resume_that_changes_the_state_names_the_field_and_the_fix(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    _first_run(workdir)
    changed = _config(steps=4, **{"checkpoint.every": 2, "optimizer.ema_decay": 0.9})
    with pytest.raises(CheckpointError) as e:  # refused from config.json, before any restore
        Toy(changed, str(workdir)).run()
    text = str(e.value)
    assert "optimizer.ema_decay: 0.0 -> 0.9" in text
    assert "--config.optimizer.ema_decay=0.0" in text and "new workdir" in text
    # A field the structural lists miss: the restore fails, and the message still names the
    # field from the stored config, never Orbax's partial_restore.
    monkeypatch.setattr(config_record, "TOGGLE_FIELDS", ())
    with pytest.raises(CheckpointError) as e:
        Toy(changed, str(workdir)).run()
    text = str(e.value)
    assert "this run has ema_params, which the checkpoint has not" in text
    assert "optimizer.ema_decay: 0.0 -> 0.9" in text and "total_steps: 2 -> 4" in text
    assert "--config.optimizer.ema_decay=0.0" in text and "partial_restore" not in text
    # the stored config is kept: the run did not start
    assert json.loads((workdir / "config.json").read_text())["optimizer"]["ema_decay"] == 0.0


def test_a_resume_without_a_stored_config_names_the_state_part(tmp_path):
    workdir = tmp_path / "run"
    _first_run(workdir, ema=0.9)
    (workdir / "config.json").unlink()
    with pytest.raises(CheckpointError) as e:
        Toy(
            _config(steps=4, **{"checkpoint.every": 2, "optimizer.ema_decay": 0.0}), str(workdir)
        ).run()
    text = str(e.value)
    assert "the checkpoint holds ema_params, which this run has not" in text
    assert "optimizer.ema_decay" in text and "config.json records" in text
    assert "partial_restore" not in text


# -- the command line ----------------------------------------------------------------------------

TOY_CONFIG = """
import ml_collections


def get_config(arg=None):
    return ml_collections.ConfigDict(dict(
        trainer="toy", seed=0, total_steps=2, log_every=1, max_bad_steps=3,
        data=dict(batch_size=8, path="/data/a"), model=dict(width=4),
        optimizer=dict(learning_rate=0.1, warmup_steps=0, weight_decay=0.0, ema_decay=0.0),
        mesh=dict(data=1, fsdp=1, tensor=1),
        checkpoint=dict(every=2, keep=1, async_save=False), eval=dict(every=1000),
    ))
"""


def _cli(argv, capsys):
    """(exit status, stderr lines) of `python -m mmjax.train ARGV`, run in this process."""
    with pytest.raises(SystemExit) as e:
        train_main.main(argv)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.total_stepz=3",
            "no config field 'total_stepz' in configs/tokenizer_rgb.py:quick (from "
            '--config.total_stepz=3). Did you mean "total_steps" (--config.total_steps=3)?',
        ),
        ("--config.total_steps=-3", "config.total_steps must be an integer >= 1, got -3"),
        ("--config.optimizer.learning_rate=nan", "config.optimizer.learning_rate must be a"),
    ],
)
def test_cli_config_errors_are_one_line_with_status_2(
    tmp_path, capsys, monkeypatch, override, message
):
    monkeypatch.chdir(ROOT)
    workdir = tmp_path / "run"
    argv = ["--config=configs/tokenizer_rgb.py:quick", f"--workdir={workdir}", override]
    status, lines = _cli(argv, capsys)
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("python -m mmjax.train: error: "), lines
    assert message in lines[0] and "--verbose" in lines[0]
    assert not workdir.exists()  # nothing trained, checkpointed or exported
    status, lines = _cli([*argv, "--verbose"], capsys)
    assert status == 2 and lines[0] == "Traceback (most recent call last):"
    assert message in lines[-1]


def test_cli_run_errors_are_one_line_with_status_1(tmp_path, capsys, monkeypatch):
    config = tmp_path / "toy.py"
    config.write_text(TOY_CONFIG)
    monkeypatch.setattr(train_main, "get_trainer", lambda c: Toy)
    argv = [f"--config={config}", f"--workdir={tmp_path / 'run'}"]
    train_main.main(argv)
    capsys.readouterr()
    status, lines = _cli(
        [*argv, "--config.total_steps=4", "--config.optimizer.ema_decay=0.9"], capsys
    )
    assert status == 1 and len(lines) == 1, lines
    assert "optimizer.ema_decay: 0.0 -> 0.9" in lines[0]
    assert "--config.optimizer.ema_decay=0.0" in lines[0] and "Traceback" not in lines[0]
