"""What every mmjax trainer shares: the mesh, state born sharded, the jitted donated step,
the optimizer update with the non-finite guard, Orbax resume (with the data iterator's
position), logging, evaluation and checkpoint cadence, a checkpoint and a clean stop on
SIGTERM (mmjax.train.preemption), and the final export.

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

A trainer built without a workdir can still lower, compile and run its step (AOT checks,
benchmarks); `run()` and `export()` need one. Each run writes its resolved config to
`WORKDIR/config.json`, and a resumed run refuses a config that changes the state's structure,
naming the fields and the values that would resume. The config's numeric fields are checked
when a trainer is built (`mmjax.train.config_checks`); a step whose update would make the state
non-finite is skipped, and a state that is non-finite anyway is never checkpointed or exported.
"""

import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.parallel import DATA_AXES, create_mesh, rules_from_config, state_shardings
from mmjax.storage import paths
from mmjax.train.checkpoint import Checkpointer, CheckpointError, structure_fingerprint
from mmjax.train.config_checks import check_config
from mmjax.train.config_record import (
    CONFIG_FILE,
    STATE_PARTS,
    config_changes,
    config_json,
    differences,
    is_structural,
    resume_advice,
    state_leaves,
    to_dict,
)
from mmjax.train.metrics_writer import MetricsWriter, ProgressLog
from mmjax.train.optimizer import build_optimizer
from mmjax.train.preemption import Preempted, PreemptionWatch
from mmjax.train.state import TrainState, all_finite, nonfinite_leaves


class NonFiniteStateError(RuntimeError):
    """A train state holding NaN or inf, which a run refuses to checkpoint or export."""


class Trainer:
    kind = name = "trainer"
    throughput_name = "examples_per_s"

    def __init__(
        self, config, workdir: str | None = None, devices=None, total_steps: int | None = None
    ):
        """workdir: where `run()` keeps checkpoints, logs and exports (None: the trainer can
        lower, compile and run steps, not `run()`); devices: the mesh's (default: all)."""
        check_config(config)  # a value out of range fails here, naming the field
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

    def param_counts(self) -> dict:
        """{'params': n} (and 'discriminator' when there is one), from abstract values."""
        state = nn.unbox(self._abstract_state())
        count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
        counts = {"params": count(state.params)}
        if state.disc_params is not None:
            counts["discriminator"] = count(state.disc_params)
        return counts

    def jit_train_step(self, shardings=None):
        """The jitted, donated `train_step(state, batch, key) -> (state, metrics)`."""
        shardings = shardings or self.state_shardings()

        def step(state, batch, key):
            # Traced under the mesh wherever it is called from, so the activation sharding
            # constraints always apply: propagation alone is not enough (docs/experiments.md).
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

    def update_metrics(self, state: TrainState, grads) -> dict:
        """grad_norm, param_norm and the learning rate of a step, for the metrics log."""
        return {
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(state.params),
            "lr": self.schedule(state.step),
        }

    def apply_gradients(self, state: TrainState, loss, grads, new_stats=None, ok=True, **extra):
        """The optimizer update, skipped (state unchanged, counted) when the loss, a gradient,
        or anything the update would write (params, optimizer state, EMA, statistics, `extra`)
        is non-finite, or `ok` is False; `extra` fields are kept only if applied.

        One `lax.cond` picks the update or the old state: it compiles faster than a `where`
        per leaf (docs/experiments.md)."""
        new_stats = state.stats if new_stats is None else {k: new_stats[k] for k in state.stats}
        old_extra = {k: getattr(state, k) for k in extra}
        updates, new_opt_state = self.tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        new_ema = state.ema_params
        if new_ema is not None:
            d = self.ema_decay
            new_ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, new_ema, new_params)
        written = (new_params, new_opt_state, new_stats, new_ema, extra)
        ok = jnp.isfinite(loss) & all_finite(grads) & all_finite(written) & ok

        def update(_):
            return written

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

    # -- workdir --------------------------------------------------------------------------
    def _require_workdir(self, what: str) -> epath.Path:
        if self.workdir is None:
            raise ValueError(
                f"{type(self).__name__} was built without a workdir, which {what} needs: "
                f"pass workdir=DIR"
            )
        return epath.Path(self.workdir)

    def export(self, state):
        """Writes what the run leaves behind (e.g. a model bundle) into the workdir; refuses a
        state with non-finite values (`NonFiniteStateError`)."""
        self._require_workdir("export")
        self.require_finite(state, "export")
        self._export(state)

    def require_finite(self, state, what: str):
        """Raises `NonFiniteStateError`, naming the step and the first non-finite leaf, when
        `state` holds a NaN or an inf; `what` is what would have been written."""
        bad = nonfinite_leaves(state, self.replicated)
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise NonFiniteStateError(
                f"step {int(state.step)}: the train state holds non-finite values in {bad[0]}"
                f"{more}; not writing the {what}. Lower optimizer.learning_rate, check the data, "
                "or resume from an earlier checkpoint."
            )

    def _record_config(self, resume_step: int | None, log: ProgressLog) -> dict | None:
        """Checks the resolved config against WORKDIR/config.json and returns the stored one
        (None: none). A resumed run whose config changes a STRUCTURE_FIELDS / TOGGLE_FIELDS
        field is refused, naming the fields and the overrides that would resume; other
        changes are printed. `_write_config` writes it once the state is restored."""
        path = self._require_workdir("run") / CONFIG_FILE
        given = config_json(self.config)
        try:
            stored = paths.read_json(path) if paths.exists(path) else None
        except ValueError as e:
            raise CheckpointError(f"cannot read {path}: {e}; fix or remove it") from e
        if resume_step is not None and stored is not None and stored != given:
            diffs = differences(stored, given)
            structural = [d for d in diffs if is_structural(*d)]
            if structural:
                lines = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in structural)
                raise CheckpointError(
                    f"{self.workdir} holds checkpoints (step {resume_step}) of a run whose "
                    f"config differs in fields that change the model or train state "
                    f"(stored {path} -> this run): {lines}. "
                    + resume_advice(structural, self.workdir)
                )
            _, other = config_changes(stored, given)
            if other:
                log.message(f"note: config changed since step {resume_step}: {'; '.join(other)}")
        return stored

    def _write_config(self, stored: dict | None, resume_step: int | None):
        """Writes the resolved config to WORKDIR/config.json (process 0); the stored config it
        replaces on a resume is kept as config.until_step_<N>.json."""
        path = self._require_workdir("run") / CONFIG_FILE
        given = config_json(self.config)
        if jax.process_index() != 0 or stored == given:
            return
        paths.makedirs(path.parent)
        if resume_step is not None and stored is not None:
            keep = path.parent / f"config.until_step_{resume_step}.json"
            paths.write_json(keep, stored, indent=2, sort_keys=True)
        paths.write_json(path, given, indent=2, sort_keys=True)  # atomic, local or gs://

    def _restore(self, ckpt, shardings, stored: dict | None):
        """The latest checkpoint's (state, data iterator state). A state that does not fit
        this run's is a `CheckpointError` naming the parts that differ, the config fields
        that differ from the stored config (`stored`), and what to do."""
        target = self._abstract_target(shardings)
        try:
            return ckpt.restore(target)
        except CheckpointError as e:
            raise CheckpointError(self._restore_mismatch(ckpt, target, stored, e)) from e

    def _restore_mismatch(self, ckpt, target, stored: dict | None, error) -> str:
        step = ckpt.latest_step()
        step_dir = ckpt.step_dir(step) / "state"
        try:
            import orbax.checkpoint as ocp

            saved = state_leaves(ocp.StandardCheckpointer().metadata(step_dir).item_metadata.tree)
        except Exception:  # no readable metadata: nothing to compare the state with
            saved = None
        ours = state_leaves(target)
        parts = []
        for part in sorted(set(saved) | set(ours)) if saved is not None else ():
            if saved.get(part) == ours.get(part):
                continue
            if part not in ours:
                what = f"the checkpoint holds {part}, which this run has not"
            elif part not in saved:
                what = f"this run has {part}, which the checkpoint has not"
            else:
                what = f"{part} differs"
            hint = STATE_PARTS.get(part)
            parts.append(f"{what} ({hint})" if hint else what)
        if not parts:  # not a mismatch of the state's parts: the checkpoint's own error
            cause = " ".join(str(error).split())
            # Orbax's partial-restore advice is no mmjax option.
            return cause.split(" If this mismatch is intentional")[0]
        found = "; ".join(parts)
        msg = f"checkpoint {ckpt.step_dir(step)} does not fit this run's train state: {found}. "
        path = epath.Path(self.workdir) / CONFIG_FILE
        if stored is None:
            return msg + (
                f"No {path} records the config that wrote it: use a new workdir, or the "
                "config that wrote the checkpoint."
            )
        diffs = differences(stored, config_json(self.config))
        if not diffs:
            return msg + (
                f"The stored config ({path}) equals this run's, so the code that builds the "
                "state changed since: use a new workdir, or the mmjax version that wrote it."
            )
        lines = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diffs)
        return msg + (
            f"The stored config ({path}) differs from this run's in: {lines}. "
            + resume_advice(diffs, self.workdir)
        )

    def _describe(self, resume_step: int | None, log: ProgressLog):
        """What the run is: workdir, mesh and devices, parameter count, where it starts."""
        devices = list(self.mesh.devices.flat)
        platforms = sorted({d.platform for d in devices})
        kinds = sorted({d.device_kind for d in devices})
        mesh = " ".join(f"{k}={v}" for k, v in self.mesh.shape.items())
        hosts = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
        counts = self.param_counts()
        params = f"{counts.pop('params'):,}"
        params += "".join(f" (+ {n:,} {k})" for k, n in counts.items())
        log.message(f"{self.name}: workdir {self.workdir}")
        log.message(
            f"mesh {mesh} over {len(devices)} {'/'.join(platforms)} device(s) "
            f"({', '.join(kinds)}){hosts}"
        )
        log.message(f"parameters: {params}")
        if resume_step is None:
            log.message(f"starting from scratch, {self.config.total_steps} steps")
        else:
            log.message(f"checkpoint at step {resume_step} of {self.config.total_steps} found")

    # -- loop ---------------------------------------------------------------------------
    def _progress(self, host: dict) -> dict:
        return {"loss": f"{host['loss']:.4f}"}

    def run(self) -> dict:
        """Trains to `total_steps` (resuming from the workdir's latest checkpoint), evaluates
        and exports; returns the final eval metrics. On SIGTERM it saves the checkpoint of the
        next step boundary (all processes the same) and raises `Preempted`."""
        with PreemptionWatch() as preemption:
            return self._run(preemption)

    def _run(self, preemption: PreemptionWatch) -> dict:
        config = self.config
        self._require_workdir("run")
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
        resume_step = ckpt.latest_step()
        total = config.total_steps
        log = ProgressLog(self.name, resume_step or 0, total, throughput_name=self.throughput_name)
        try:
            self._describe(resume_step, log)
            stored = self._record_config(resume_step, log)
            return self._loop(ckpt, data_it, shardings, resume_step, log, preemption, stored)
        finally:
            log.close()
            ckpt.close()

    def _loop(
        self, ckpt, data_it, shardings, resume_step, log: ProgressLog, preemption, stored=None
    ) -> dict:
        config, final = self.config, {}
        writer = MetricsWriter(self.workdir)
        with jax.set_mesh(self.mesh):
            if resume_step is not None:
                state, it_state = self._restore(ckpt, shardings, stored)
                data_it.set_state(it_state)
                writer.resume(int(state.step))  # drop the logs written past the checkpoint
                # Every process confirms its restore (a multi-host log shows each one).
                restored = f"resumed from step {int(state.step)} in {self.workdir}"
                if log.enabled:
                    log.message(restored)
                else:
                    print(restored, flush=True)
            else:
                state = self.init_state(self._global_batch(next(data_it)), shardings)
            self._write_config(stored, resume_step)
            step_fn = self.jit_train_step(shardings)
            start, total = int(state.step), config.total_steps
            key = jax.random.key(config.seed + 1)
            last_log, last_time = start, time.perf_counter()
            preempted = None
            for step in range(start, total):
                batch = self._global_batch(next(data_it))
                state, metrics = step_fn(state, batch, jax.random.fold_in(key, step))
                done = step + 1
                log.advance()
                if done % config.log_every == 0 or done == total:
                    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    per_step = (now - last_time) / (done - last_log)
                    host[self.throughput_name] = self.examples_per_step / per_step
                    host["skipped"] = int(state.skipped)
                    last_log, last_time = done, now
                    writer.write_scalars(done, host)
                    fields = self._progress(host)
                    if host["skipped"]:
                        fields["skipped"] = host["skipped"]
                    log.log(done, fields, host[self.throughput_name], per_step)
                    if int(state.bad_streak) >= config.max_bad_steps:
                        ckpt.wait()
                        raise RuntimeError(
                            f"{int(state.bad_streak)} steps in a row had a non-finite loss, "
                            f"gradient or update (max_bad_steps={config.max_bad_steps}); "
                            f"stopping at step {done}. Lower optimizer.learning_rate or check "
                            "the data."
                        )
                if done % config.eval.every == 0 or done == total:
                    final = self._evaluate(state, writer, done, True)
                    log.eval(done, final)
                # Every process asks at every boundary (a multi-process sync point needs it).
                if done < total and preemption.reached(done - start):
                    preempted = done
                if done % config.checkpoint.every == 0 or done in (total, preempted):
                    self.require_finite(state, "checkpoint")
                ckpt.save(done, state, data_it.get_state(), force=done in (total, preempted))
                if preempted:
                    break
            ckpt.wait()
            if preempted:
                writer.close()
                raise Preempted(preempted, self.workdir)
            if start >= total:  # resumed a finished run: evaluate once more, logged already
                final = self._evaluate(
                    state, MetricsWriter(self.workdir, enabled=False), start, False
                )
                log.eval(start, final)
            done = int(state.step)
            if done > 0 and int(state.skipped) == done:
                raise NonFiniteStateError(
                    f"every one of the {done} steps was skipped for a non-finite loss, gradient "
                    "or update; not exporting an untrained model. Lower "
                    "optimizer.learning_rate or check the data."
                )
            self.export(state)
        writer.close()
        return final
