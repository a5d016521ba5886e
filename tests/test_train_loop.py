"""The shared trainer loop (`mmjax.train.loop.Trainer`) on a toy least-squares trainer: a
non-finite loss or gradient skips the step (params, optimizer state and EMA unchanged) and is
counted; a finite step applies exactly optax's update; too many bad steps in a row stop the run
with a message that names the cause."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

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

    def __init__(self, config, workdir, nan_from=None):
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


def _config(steps=40, max_bad=3):
    return ml_collections.ConfigDict(
        dict(
            seed=0, total_steps=steps, log_every=1, max_bad_steps=max_bad,
            data=dict(batch_size=8),
            optimizer=dict(learning_rate=0.1, warmup_steps=0, weight_decay=0.0, ema_decay=0.9),
            mesh=dict(data=1, fsdp=1, tensor=1),
            checkpoint=dict(every=1000, keep=1, async_save=False),
            eval=dict(every=1000),
        )
    )  # fmt: skip


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
