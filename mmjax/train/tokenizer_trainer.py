"""The tokenizer trainer: a quantized autoencoder for one modality, sharded over the mesh.

`train_tokenizer(config, workdir)` builds the mesh, the Grain pipeline and the model, makes
the state born sharded (`jax.eval_shape` -> logical rules -> `jit(init, out_shardings)`),
resumes from the latest checkpoint in `workdir` if there is one, and runs the jitted,
donated train step; it logs, evaluates (metrics + PNG grid), checkpoints (with the data
iterator's position) and finally exports the `Tokenizer` bundle to `workdir/tokenizer`.
"""

import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image
from tqdm import tqdm

from mmjax.data import ScenesSource, global_batch, pipeline_from_config
from mmjax.eval import reconstruction_metrics, save_image_grid, to_rgb
from mmjax.parallel import create_mesh, rules_from_config, state_shardings
from mmjax.tokenizers import MODALITIES, Tokenizer, build_autoencoder
from mmjax.train.checkpoint import Checkpointer, structure_fingerprint
from mmjax.train.metrics_writer import MetricsWriter
from mmjax.train.optimizer import build_optimizer
from mmjax.train.state import TrainState, all_finite, keep_if
from mmjax.train.tokenizer_objective import TokenizerObjective

DATA_AXES = ("data", "fsdp")


def _to_dict(c):
    return c.to_dict() if hasattr(c, "to_dict") else dict(c)


class TokenizerTrainer:
    def __init__(self, config, workdir: str, devices=None):
        """devices: the devices of the mesh (default: all)."""
        self.config, self.workdir = config, workdir
        self.modality = config.modality
        if self.modality not in MODALITIES:
            raise ValueError(
                f"config.modality must be one of {tuple(MODALITIES)}, got {self.modality!r}"
            )
        self.codec = MODALITIES[self.modality]
        self.mesh = create_mesh(_to_dict(config.mesh), devices=devices)
        self.rules = rules_from_config(config.get("sharding_rules", None))
        self.model = build_autoencoder(config.model, config.quantizer, self.modality)
        self.tx, self.schedule = build_optimizer(config.optimizer, config.total_steps)
        self.ema_decay = config.optimizer.get("ema_decay", 0.0)
        self.objective = TokenizerObjective(self.model, self.codec, config)
        axes = tuple(a for a in DATA_AXES if a in self.mesh.axis_names)
        self.batch_sharding = NamedSharding(self.mesh, P(axes))
        self.replicated = NamedSharding(self.mesh, P())
        self.val_raw = self._validation_batch()
        self.usage_raw, self._encode = self._usage_set(), None

    # -- data ---------------------------------------------------------------------------
    def _validation_batch(self) -> np.ndarray:
        ev, data = self.config.eval, self.config.data
        source = ScenesSource(ev.get("split", "validation"), data.resolution, ev.num_images)
        raw = np.stack([source[i][self.modality] for i in range(ev.num_images)])
        self.codec.validate(raw)
        return raw

    def _usage_set(self) -> np.ndarray:
        """Validation images for codebook usage: enough tokens that a well-used codebook can
        show it (a batch of 512 tokens cannot hit 90% of 1000 codes)."""
        ev, data = self.config.eval, self.config.data
        n = int(ev.get("usage_images", 0))
        source = ScenesSource(ev.get("split", "validation"), data.resolution, max(n, 1))
        return np.stack([source[i][self.modality] for i in range(n)]) if n else None

    def _codebook_usage(self, params, stats, batch_size: int = 64) -> dict:
        """usage (fraction of codes hit) and perplexity of the code histogram over the usage
        set, per quantizer level for residual quantizers (then averaged)."""
        if self.usage_raw is None:
            return {}
        if self._encode is None:
            self._encode = jax.jit(
                lambda p, s, raw: self.model.apply(
                    {"params": p, **s}, self.codec.preprocess(raw), method="encode"
                )
            )
        k = self.model.codebook_size
        tokens = np.concatenate(
            [
                np.asarray(self._encode(params, stats, self.usage_raw[i : i + batch_size]))
                for i in range(0, len(self.usage_raw), batch_size)
            ]
        )
        # [B, h, w] or [B, sum s*s] (multi-scale): one level; [B, h, w, depth]: residual.
        levels = tokens.reshape(-1, tokens.shape[-1] if tokens.ndim == 4 else 1)
        usage, perplexity = [], []
        for col in levels.T:
            counts = np.bincount(col, minlength=k)
            p = counts[counts > 0] / counts.sum()
            usage.append(np.count_nonzero(counts) / k)
            perplexity.append(float(np.exp(-(p * np.log(p)).sum())))
        return {"codebook_usage": float(np.mean(usage)), "codebook_perplexity": np.mean(perplexity)}

    def _global(self, host_array):
        return global_batch({"x": host_array}, self.mesh)["x"]

    # -- state --------------------------------------------------------------------------
    def _init_state(self, key, raw):
        x = self.codec.preprocess(raw)
        model_key, disc_key = jax.random.split(key)
        variables = self.model.init({"params": model_key}, x)
        params = variables["params"]
        stats = {k: v for k, v in variables.items() if k != "params"}
        disc = self.objective.init_disc(disc_key, x) if self.objective.uses_gan else (None, None)
        return TrainState.create(params, self.tx.init(params), stats, self.ema_decay > 0, *disc)

    def _abstract_state(self):
        example = self.val_raw[0]
        spec = jax.ShapeDtypeStruct((self.config.data.batch_size, *example.shape), example.dtype)
        return jax.eval_shape(self._init_state, jax.random.key(0), spec)

    # -- steps --------------------------------------------------------------------------
    def _train_step(self, state: TrainState, raw, key):
        obj = self.objective
        loss, grads, (terms, q, new_stats, y) = obj.generator_grads(
            state.params, state.stats, raw, key, state.step, state.disc_params
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ok = jnp.isfinite(loss) & all_finite(grads)
        disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
        if obj.uses_gan:
            real = self.codec.preprocess(raw)
            disc_params, disc_opt_state, d_loss, d_grads = obj.disc_update(
                disc_params, disc_opt_state, real, y, state.step
            )
            ok = ok & jnp.isfinite(d_loss) & all_finite(d_grads)
            terms = {**terms, "gan/d_loss": d_loss}
        new_stats = {k: new_stats[k] for k in state.stats}
        ema = state.ema_params
        if ema is not None:
            d = self.ema_decay
            ema = keep_if(ok, jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params), ema)
        state = state.replace(
            step=state.step + 1,
            params=keep_if(ok, params, state.params),
            opt_state=keep_if(ok, opt_state, state.opt_state),
            stats=keep_if(ok, new_stats, state.stats),
            ema_params=ema,
            skipped=state.skipped + (~ok).astype(jnp.int32),
            bad_streak=jnp.where(ok, 0, state.bad_streak + 1),
            disc_params=keep_if(ok, disc_params, state.disc_params),
            disc_opt_state=keep_if(ok, disc_opt_state, state.disc_opt_state),
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": self.schedule(state.step),
            **terms,
            **{f"quantizer/{k}": v for k, v in q.metrics.items()},
        }
        return state, metrics

    def lower_train_step(self):
        """The train step lowered for this trainer's mesh from abstract values only (no
        allocation): `.compile()` it for AOT checks, e.g. for a TPU topology on a CPU host."""
        abstract = self._abstract_state()
        shardings = state_shardings(abstract, self.mesh, self.rules)
        state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            nn.unbox(abstract),
            shardings,
        )
        example = self.val_raw[0]
        raw = jax.ShapeDtypeStruct(
            (self.config.data.batch_size, *example.shape),
            example.dtype,
            sharding=self.batch_sharding,
        )
        key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=self.replicated)
        step = jax.jit(
            self._train_step, out_shardings=(shardings, self.replicated), donate_argnums=0
        )
        with jax.set_mesh(self.mesh):
            return step.lower(state, raw, key)

    def init_state(self, first_raw, shardings=None):
        """The train state, born sharded; `first_raw` (a global batch) also seeds
        data-dependent init (k-means codebooks)."""
        shardings = shardings or state_shardings(self._abstract_state(), self.mesh, self.rules)
        init = jax.jit(lambda k, raw: nn.unbox(self._init_state(k, raw)), out_shardings=shardings)
        with jax.set_mesh(self.mesh):
            return init(jax.random.key(self.config.seed), first_raw)

    def jit_train_step(self, shardings=None):
        """The jitted, donated `train_step(state, raw, key) -> (state, metrics)`."""
        shardings = shardings or state_shardings(self._abstract_state(), self.mesh, self.rules)
        return jax.jit(
            self._train_step,
            in_shardings=(shardings, self.batch_sharding, self.replicated),
            out_shardings=(shardings, self.replicated),
            donate_argnums=0,
        )

    def _eval_step(self, params, stats, raw):
        y, q = self.model.apply({"params": params, **stats}, self.codec.preprocess(raw))
        return self.codec.postprocess(y), q.metrics

    # -- loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        config, mesh = self.config, self.mesh
        data_it = pipeline_from_config(config.data)
        abstract = self._abstract_state()
        shardings = state_shardings(abstract, mesh, self.rules)
        metadata = {
            "trainer": "tokenizer",
            "modality": self.modality,
            "model": _to_dict(config.model),
            "quantizer": _to_dict(config.quantizer),
            "fingerprint": structure_fingerprint(nn.unbox(abstract).params),
        }
        ckpt = Checkpointer(
            self.workdir,
            keep=config.checkpoint.keep,
            save_every=config.checkpoint.every,
            async_save=config.checkpoint.get("async_save", True),
            metadata=metadata,
        )
        writer = MetricsWriter(self.workdir)
        with jax.set_mesh(mesh):
            if ckpt.latest_step() is not None:
                target = jax.tree.map(
                    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                    nn.unbox(abstract),
                    shardings,
                )
                state, it_state = ckpt.restore(target)
                data_it.set_state(it_state)
                print(f"resumed from step {int(state.step)} in {self.workdir}")
            else:
                state = self.init_state(self._global(next(data_it)[self.modality]), shardings)
            step_fn = self.jit_train_step(shardings)
            eval_fn = jax.jit(self._eval_step)
            start = int(state.step)
            key = jax.random.key(config.seed + 1)
            last_log, last_time, metrics = start, time.perf_counter(), {}
            bar = tqdm(
                range(start, config.total_steps),
                initial=start,
                total=config.total_steps,
                disable=jax.process_index() != 0,
                desc=f"tokenizer[{self.modality}]",
            )
            for step in bar:
                raw = self._global(next(data_it)[self.modality])
                state, metrics = step_fn(state, raw, jax.random.fold_in(key, step))
                done = step + 1
                if done % config.log_every == 0 or done == config.total_steps:
                    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    host["images_per_s"] = (
                        (done - last_log) * config.data.batch_size / (now - last_time)
                    )
                    host["skipped"] = int(state.skipped)
                    last_log, last_time = done, now
                    writer.write_scalars(done, host)
                    bar.set_postfix(
                        loss=f"{host['loss']:.4f}", usage=f"{host.get('quantizer/usage', 0):.2f}"
                    )
                    if int(state.bad_streak) >= config.max_bad_steps:
                        ckpt.wait()
                        raise RuntimeError(
                            f"{int(state.bad_streak)} steps in a row had a non-finite loss or "
                            f"gradient (max_bad_steps={config.max_bad_steps}); stopping at step "
                            f"{done}. Lower optimizer.learning_rate or check the data."
                        )
                if done % config.eval.every == 0 or done == config.total_steps:
                    final = self._evaluate(state, eval_fn, writer, done)
                ckpt.save(done, state, data_it.get_state(), force=done == config.total_steps)
            ckpt.wait()
            if start >= config.total_steps:  # resumed a finished run: evaluate once more
                final = self._evaluate(state, eval_fn, writer, start, save_grid=False)
            self._export(state)
        ckpt.close()
        writer.close()
        return final

    def _evaluate(self, state, eval_fn, writer, step, save_grid=True) -> dict:
        params = state.ema_params if state.ema_params is not None else state.params
        recon, qmetrics = eval_fn(params, state.stats, jnp.asarray(self.val_raw))
        recon = np.asarray(jax.device_get(recon))
        metrics = {
            f"eval/{k}": v
            for k, v in reconstruction_metrics(self.modality, self.val_raw, recon).items()
        }
        metrics.update({f"eval/quantizer/{k}": float(v) for k, v in qmetrics.items()})
        usage = self._codebook_usage(params, state.stats)
        metrics.update({f"eval/{k}": float(v) for k, v in usage.items()})
        writer.write_scalars(step, metrics)
        if save_grid and jax.process_index() == 0:
            rows = [
                [to_rgb(self.modality, a) for a in self.val_raw],
                [to_rgb(self.modality, a) for a in recon],
            ]
            grid = save_image_grid(
                rows,
                os.path.join(self.workdir, "eval", f"{step:07d}.png"),
                labels=["input", f"step {step}"],
                scale=2,
            )
            image = np.asarray(Image.open(grid).convert("RGB")) / 255.0
            writer.write_images(step, {"eval/reconstructions": image})
        return metrics

    def _export(self, state):
        params = state.ema_params if state.ema_params is not None else state.params
        Tokenizer.save(
            os.path.join(self.workdir, "tokenizer"),
            modality=self.modality,
            model_config=_to_dict(self.config.model),
            quantizer_config=_to_dict(self.config.quantizer),
            resolution=self.config.data.resolution,
            variables={"params": jax.device_get(params), **jax.device_get(state.stats)},
        )


def train_tokenizer(config, workdir: str) -> dict:
    return TokenizerTrainer(config, workdir).run()
