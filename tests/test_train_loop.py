"""The shared trainer loop (`mmjax.train.loop.Trainer`) on a toy least-squares trainer: a
non-finite loss or gradient skips the step (params, optimizer state and EMA unchanged) and is
counted; a finite step applies exactly optax's update; too many bad steps in a row stop the run
with a message that names the cause. Also: the config.json of a run and the refusal of a resume
that changes the state's structure, plain log lines when stdout is not a terminal, and a
trainer without a workdir."""

import json
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mmjax.train import CheckpointError
from mmjax.train.config_record import config_changes, config_json
from mmjax.train.loop import Trainer
from mmjax.train.state import TrainState

W_TRUE = np.array([1.0, -2.0, 0.5, 3.0], np.float32)


class _Data:
    """Batches of (x, y = x w_true); batch `nan_from` on carry NaN inputs."""

    def __init__(self, nan_from=None):
        self.pos, self.nan_from = 0, nan_from

    def __next__(self):
        x = np.random.default_rng(self.pos).normal(size=(8, 4)).astype(np.float32)
        if self.nan_from is not None and self.pos >= self.nan_from:
            x[0, 0] = np.nan
        self.pos += 1
        return {"x": x, "y": x @ W_TRUE}

    def get_state(self):
        return {"pos": self.pos}

    def set_state(self, state):
        self.pos = state["pos"]


class Toy(Trainer):
    kind = name = "toy"

    def __init__(self, config, workdir=None, nan_from=None):
        super().__init__(config, workdir, devices=jax.devices()[:1])
        self.nan_from = nan_from

    def _pipeline(self):
        return _Data(self.nan_from)

    def _global_batch(self, host_batch):
        return jax.device_put(host_batch, self.batch_sharding)

    def _batch_spec(self):
        return {
            "x": jax.ShapeDtypeStruct((8, 4), np.float32),
            "y": jax.ShapeDtypeStruct((8,), np.float32),
        }

    def _init_state(self, key, batch):
        params = {"w": jnp.zeros(4, jnp.float32)}
        return TrainState.create(params, self.tx.init(params), {}, self.ema_decay > 0)

    @staticmethod
    def loss(params, batch):
        return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)

    def _train_step(self, state, batch, key):
        loss, grads = jax.value_and_grad(self.loss)(state.params, batch)
        return self.apply_gradients(state, loss, grads), {"loss": loss}

    def _metadata(self):
        return {}

    def _evaluate(self, state, writer, step, save_grid=True):
        return {"eval/w_error": float(np.abs(np.asarray(state.params["w"]) - W_TRUE).max())}

    def _export(self, state):
        self.final_state = state


def _config(steps=40, max_bad=3, **changes):
    """The toy's config; `changes` set dotted fields ("optimizer.ema_decay": 0.0)."""
    c = ml_collections.ConfigDict(
        dict(
            seed=0, total_steps=steps, log_every=1, max_bad_steps=max_bad,
            data=dict(batch_size=8, path="/data/a"),
            model=dict(width=4),  # not read by the toy: only what config.json compares
            optimizer=dict(learning_rate=0.1, warmup_steps=0, weight_decay=0.0, ema_decay=0.9),
            mesh=dict(data=1, fsdp=1, tensor=1),
            checkpoint=dict(every=1000, keep=1, async_save=False),
            eval=dict(every=1000),
        )
    )  # fmt: skip
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = c
        for name in parents:
            node = node[name]
        node[leaf] = value
    return c


def test_finite_steps_follow_optax_and_bad_steps_change_nothing(tmp_path):
    trainer = Toy(_config(), str(tmp_path))
    data = _Data()
    batch = trainer._global_batch(next(data))
    state = trainer.init_state(batch)
    step = trainer.jit_train_step()
    # a finite step: exactly optax's AdamW update and the EMA of the new params
    grads = jax.grad(Toy.loss)(state.params, batch)
    updates, _ = trainer.tx.update(grads, state.opt_state, state.params)
    want = optax.apply_updates(state.params, updates)
    state, _ = step(state, batch, jax.random.key(0))
    np.testing.assert_allclose(state.params["w"], want["w"], rtol=1e-6)
    np.testing.assert_allclose(state.ema_params["w"], 0.1 * np.asarray(want["w"]), rtol=1e-6)
    assert int(state.skipped) == 0 and int(state.bad_streak) == 0
    # a NaN batch: nothing moves, the step counter does, and the skip is counted
    before = jax.device_get(state)
    bad = dict(jax.device_get(batch))
    bad["x"] = bad["x"].copy()
    bad["x"][0, 0] = np.nan
    state, metrics = step(state, trainer._global_batch(bad), jax.random.key(1))
    assert not np.isfinite(float(metrics["loss"]))
    after = jax.device_get(state)
    for name in ("params", "opt_state", "ema_params"):
        jax.tree.map(np.testing.assert_array_equal, getattr(after, name), getattr(before, name))
    assert int(after.step) == 2 and int(after.skipped) == 1 and int(after.bad_streak) == 1
    # the next good step resets the streak but keeps the count
    state, _ = step(state, batch, jax.random.key(2))
    assert int(state.skipped) == 1 and int(state.bad_streak) == 0


def test_a_run_learns_and_too_many_bad_steps_stop_it(tmp_path):
    final = Toy(_config(steps=200, max_bad=100), str(tmp_path / "good")).run()
    assert final["eval/w_error"] < 0.05
    with pytest.raises(RuntimeError, match=r"3 steps in a row had a non-finite loss"):
        Toy(_config(max_bad=3), str(tmp_path / "bad"), nan_from=5).run()


def test_config_json_is_written_and_a_structural_change_refuses_to_resume(tmp_path, capsys):
    workdir = tmp_path / "run"
    first = _config(steps=4, **{"checkpoint.every": 2})
    Toy(first, str(workdir)).run()
    stored = json.loads((workdir / "config.json").read_text())
    assert stored == config_json(first) and stored["model"] == {"width": 4}
    assert stored["total_steps"] == 4 and stored["optimizer"]["ema_decay"] == 0.9
    # Structural changes: a model field, the EMA switched off. Refused before any restore,
    # naming the field and both values; the stored config stays.
    for field, old, new in (("model.width", 4, 8), ("optimizer.ema_decay", 0.9, 0.0)):
        changed = _config(steps=6, **{"checkpoint.every": 2, field: new})
        with pytest.raises(CheckpointError, match=rf"{re.escape(field)}: {old!r} -> {new!r}"):
            Toy(changed, str(workdir)).run()
        assert json.loads((workdir / "config.json").read_text()) == stored
    capsys.readouterr()
    # Other changes (length, data path, the EMA's decay while on) resume, with a note.
    changes = {"checkpoint.every": 2, "data.path": "/data/b", "optimizer.ema_decay": 0.99}
    longer = _config(steps=6, **changes)
    Toy(longer, str(workdir)).run()
    out = capsys.readouterr().out
    note = next(line for line in out.splitlines() if line.startswith("note: config changed"))
    for part in ("total_steps: 4 -> 6", "data.path: '/data/a' -> '/data/b'", "ema_decay: 0.9"):
        assert part in note, note
    assert "resumed from step 4" in out
    assert json.loads((workdir / "config.json").read_text()) == config_json(longer)
    kept = json.loads((workdir / "config.until_step_4.json").read_text())
    assert kept == stored


def test_config_changes_sorts_fields_into_structural_and_other():
    base = config_json(_config())
    other = config_json(
        _config(**{"total_steps": 9, "optimizer.learning_rate": 0.5, "optimizer.ema_decay": 0.5})
    )
    structural, notes = config_changes(base, other)
    assert structural == [] and len(notes) == 3
    changed = dict(base, modalities={"rgb": {"vocab_size": 8}}, model={"width": 4, "depth": 2})
    changed["optimizer"] = dict(base["optimizer"], grad_clip=1.0)
    base["modalities"] = None
    structural, notes = config_changes(base, changed)
    assert structural == [
        "modalities: None -> <not set>",
        "modalities.rgb.vocab_size: <not set> -> 8",
        "model.depth: <not set> -> 2",
        "optimizer.grad_clip: <not set> -> 1.0",
    ]
    assert notes == []
    # a field added since the stored run, at the value that run had, is no change
    trunk = dict(base, model={"width": 4, "trunk": "vit"})
    assert config_changes(dict(base, model={"width": 4}), trunk) == ([], [])
    structural, _ = config_changes(
        dict(base, model={"width": 4}), dict(trunk, model={"trunk": "mlp", "width": 4})
    )
    assert structural == ["model.trunk: 'vit' -> 'mlp'"]


def test_plain_log_lines_when_stdout_is_not_a_terminal(tmp_path, capsys):
    config = _config(steps=6, **{"log_every": 2, "eval.every": 3})
    Toy(config, str(tmp_path)).run()
    out = capsys.readouterr().out  # pytest's capture is not a terminal
    assert "\r" not in out
    lines = out.splitlines()
    steps = [line for line in lines if re.match(r"toy step \d+/6 ", line)]
    assert [int(re.match(r"toy step (\d+)/", line)[1]) for line in steps] == [2, 4, 6]
    for line in steps:
        assert re.fullmatch(
            r"toy step \d/6 loss \d+\.\d{4} examples_per_s [\d.,]+ eta \d+:\d\d:\d\d", line
        ), line
    assert steps[-1].endswith("eta 0:00:00")
    evals = [line for line in lines if line.startswith("toy eval step")]
    assert [line.split(":")[0] for line in evals] == ["toy eval step 3", "toy eval step 6"]
    assert all(re.search(r"w_error \S+$", line) for line in evals)
    # What the run is, before the first step.
    head = "\n".join(lines[: lines.index(steps[0])])
    assert f"workdir {tmp_path}" in head and "starting from scratch, 6 steps" in head
    assert "mesh data=1 fsdp=1 tensor=1 over 1 cpu device(s)" in head
    assert "parameters: 4\n" in head + "\n"


def test_a_trainer_without_workdir_steps_but_does_not_run():
    trainer = Toy(_config())
    assert trainer.workdir is None
    batch = trainer._global_batch(next(_Data()))
    state, metrics = trainer.jit_train_step()(trainer.init_state(batch), batch, jax.random.key(0))
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
    with pytest.raises(ValueError, match="without a workdir, which run needs"):
        trainer.run()
    with pytest.raises(ValueError, match="without a workdir, which export needs"):
        trainer.export(state)


class _WritingToy(Toy):
    """The toy with the real trainers' evaluation contract: it writes its metrics row."""

    def _evaluate(self, state, writer, step, save_grid=True):
        metrics = super()._evaluate(state, writer, step, save_grid)
        writer.write_scalars(step, metrics)
        return metrics


def test_rerunning_a_finished_run_adds_no_rows(tmp_path):
    """A finished workdir run again evaluates (and exports) once more, but metrics.jsonl keeps
    one row per step and kind: the same file as before."""
    config = _config(steps=4, **{"checkpoint.every": 2, "eval.every": 2})
    first = _WritingToy(config, str(tmp_path)).run()
    before = (tmp_path / "metrics.jsonl").read_text()
    evals = [r["step"] for r in map(json.loads, before.splitlines()) if "eval/w_error" in r]
    assert evals == [2, 4]
    again = _WritingToy(config, str(tmp_path)).run()
    assert again == first
    assert (tmp_path / "metrics.jsonl").read_text() == before
