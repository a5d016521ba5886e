"""What every mmjax trainer shares: the mesh, state born sharded, the jitted donated step,
the optimizer update with the non-finite guard, Orbax resume (with the data iterator's
position), logging, evaluation and checkpoint cadence, and the final export.

A trainer subclasses `Trainer` and provides:
    kind, name                             checkpoint metadata; progress-bar label
    _pipeline()                            the checkpointable host iterator
    _global_batch(host_batch)              host batch -> global arrays (sharded on data axes)
    _batch_spec()                          ShapeDtypeStructs of one global batch
    _init_state(key, batch)                a TrainState (boxed params allowed)
    _train_step(state, batch, key)         -> (state, metrics); use `apply_gradients`
    _metadata()                            extra checkpoint metadata (model config ...)
    _evaluate(state, writer, step, save_grid) -> dict of eval metrics
    _export(state)                         what the run leaves behind
    examples_per_step, throughput_name     for the throughput metric
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from mmjax.parallel import DATA_AXES, create_mesh, rules_from_config, state_shardings
from mmjax.train.checkpoint import Checkpointer, structure_fingerprint
from mmjax.train.metrics_writer import MetricsWriter
from mmjax.train.optimizer import build_optimizer
from mmjax.train.state import TrainState, all_finite


def to_dict(c) -> dict:
    return c.to_dict() if hasattr(c, "to_dict") else dict(c)


class Trainer:
    kind = name = "trainer"
    throughput_name = "examples_per_s"

    def __init__(self, config, workdir: str, devices=None, total_steps: int | None = None):
        """devices: the devices of the mesh (default: all)."""
        self.config, self.workdir = config, workdir
        self.mesh = create_mesh(to_dict(config.mesh), devices=devices)
        self.rules = rules_from_config(config.get("sharding_rules", None))
        self.tx, self.schedule = build_optimizer(
            config.optimizer, total_steps or config.total_steps
        )
        self.ema_decay = config.optimizer.get("ema_decay", 0.0)
        axes = tuple(a for a in DATA_AXES if a in self.mesh.axis_names)
        self.data_axes = axes
        self.batch_sharding = NamedSharding(self.mesh, P(axes))
        self.replicated = NamedSharding(self.mesh, P())

    @property
    def examples_per_step(self) -> int:
        return self.config.data.batch_size

    # -- state --------------------------------------------------------------------------
    def _abstract_state(self):
        # The key is made inside the trace: an eager key would run on the mesh's devices,
        # which for an AOT topology are not attached to this host.
        return jax.eval_shape(lambda b: self._init_state(jax.random.key(0), b), self._batch_spec())

    def state_shardings(self):
        return state_shardings(self._abstract_state(), self.mesh, self.rules)

    def init_state(self, first_batch, shardings=None):
        """The train state, born sharded; `first_batch` (global) also seeds data-dependent
        init (e.g. k-means codebooks)."""
        shardings = shardings or self.state_shardings()
        init = jax.jit(lambda k, b: nn.unbox(self._init_state(k, b)), out_shardings=shardings)
        with jax.set_mesh(self.mesh):
            return init(jax.random.key(self.config.seed), first_batch)

    def jit_train_step(self, shardings=None):
        """The jitted, donated `train_step(state, batch, key) -> (state, metrics)`."""
        shardings = shardings or self.state_shardings()

        def step(state, batch, key):
            # Traced under the mesh wherever it is called from, so the activation sharding
            # constraints always apply. (Without them, XLA's propagation alone gave wrong
            # numbers for FourM on a (data=2, fsdp=2, tensor=2) CPU mesh with jax 0.10.2.)
            with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
                return self._train_step(state, batch, key)

        return jax.jit(
            step,
            in_shardings=(shardings, self.batch_sharding, self.replicated),
            out_shardings=(shardings, self.replicated),
            donate_argnums=0,
        )

    def _abstract_target(self, shardings):
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            nn.unbox(self._abstract_state()),
            shardings,
        )

    def lower_train_step(self):
        """The train step lowered for this trainer's mesh from abstract values only (no
        allocation): `.compile()` it for AOT checks, e.g. for a TPU topology on a CPU host."""
        shardings = self.state_shardings()
        batch = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.batch_sharding),
            self._batch_spec(),
        )
        key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=self.replicated)
        with jax.set_mesh(self.mesh):
            return self.jit_train_step(shardings).lower(
                self._abstract_target(shardings), batch, key
            )

    def apply_gradients(self, state: TrainState, loss, grads, new_stats=None, ok=True, **extra):
        """The optimizer update, skipped (state unchanged, counted) when the loss or any
        gradient is non-finite or `ok` is False; `extra` fields are kept only if applied.

        One `lax.cond` picks the update or the old state (a `where` per leaf gave the same
        result but tripled the compile time of the tokenizer step on CPU)."""
        ok = jnp.isfinite(loss) & all_finite(grads) & ok
        new_stats = state.stats if new_stats is None else {k: new_stats[k] for k in state.stats}
        old_extra = {k: getattr(state, k) for k in extra}

        def update(_):
            updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema = state.ema_params
            if ema is not None:
                d = self.ema_decay
                ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)
            return params, opt_state, new_stats, ema, extra

        def keep(_):
            return state.params, state.opt_state, state.stats, state.ema_params, old_extra

        params, opt_state, stats, ema, kept = jax.lax.cond(ok, update, keep, None)
        return state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            stats=stats,
            ema_params=ema,
            skipped=state.skipped + (~ok).astype(jnp.int32),
            bad_streak=jnp.where(ok, 0, state.bad_streak + 1),
            **kept,
        )

    @staticmethod
    def eval_params(state: TrainState):
        return state.ema_params if state.ema_params is not None else state.params

    # -- loop ---------------------------------------------------------------------------
    def _progress(self, host: dict) -> dict:
        return {"loss": f"{host['loss']:.4f}"}

    def run(self) -> dict:
        config = self.config
        data_it = self._pipeline()
        shardings = self.state_shardings()
        metadata = {
            "trainer": self.kind,
            **self._metadata(),
            "fingerprint": structure_fingerprint(nn.unbox(self._abstract_state()).params),
        }
        ckpt = Checkpointer(
            self.workdir,
            keep=config.checkpoint.keep,
            save_every=config.checkpoint.every,
            async_save=config.checkpoint.get("async_save", True),
            metadata=metadata,
        )
        writer = MetricsWriter(self.workdir)
        final = {}
        with jax.set_mesh(self.mesh):
            if ckpt.latest_step() is not None:
                state, it_state = ckpt.restore(self._abstract_target(shardings))
                data_it.set_state(it_state)
                print(f"resumed from step {int(state.step)} in {self.workdir}")
            else:
                state = self.init_state(self._global_batch(next(data_it)), shardings)
            step_fn = self.jit_train_step(shardings)
            start, total = int(state.step), config.total_steps
            key = jax.random.key(config.seed + 1)
            last_log, last_time = start, time.perf_counter()
            bar = tqdm(
                range(start, total),
                initial=start,
                total=total,
                disable=jax.process_index() != 0,
                desc=self.name,
            )
            for step in bar:
                batch = self._global_batch(next(data_it))
                state, metrics = step_fn(state, batch, jax.random.fold_in(key, step))
                done = step + 1
                if done % config.log_every == 0 or done == total:
                    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    rate = (done - last_log) * self.examples_per_step / (now - last_time)
                    host[self.throughput_name] = rate
                    host["skipped"] = int(state.skipped)
                    last_log, last_time = done, now
                    writer.write_scalars(done, host)
                    bar.set_postfix(self._progress(host))
                    if int(state.bad_streak) >= config.max_bad_steps:
                        ckpt.wait()
                        raise RuntimeError(
                            f"{int(state.bad_streak)} steps in a row had a non-finite loss or "
                            f"gradient (max_bad_steps={config.max_bad_steps}); stopping at step "
                            f"{done}. Lower optimizer.learning_rate or check the data."
                        )
                if done % config.eval.every == 0 or done == total:
                    final = self._evaluate(state, writer, done, True)
                ckpt.save(done, state, data_it.get_state(), force=done == total)
            ckpt.wait()
            if start >= total:  # resumed a finished run: evaluate once more
                final = self._evaluate(state, writer, start, False)
            self._export(state)
        ckpt.close()
        writer.close()
        return final
