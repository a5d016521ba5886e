"""The tokenizer trainer: a quantized autoencoder for one modality, sharded over the mesh.

`train_tokenizer(config, workdir)` builds the mesh, the Grain pipeline and the model, makes
the state born sharded (`jax.eval_shape` -> logical rules -> `jit(init, out_shardings)`),
resumes from the latest checkpoint in `workdir` if there is one, and runs the jitted,
donated train step; it logs, evaluates (metrics + PNG grid, codebook usage) on the
validation part of the training source (`mmjax.data.build_source(data, "validation")`, at the
evaluation crop), checkpoints (with the data iterator's position) and finally exports the
`Tokenizer` bundle, with the data it was trained on, to `workdir/tokenizer`.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from mmjax.data import describe_source, eval_dataset, pipeline_from_config
from mmjax.eval import image_quality_metrics, reconstruction_metrics, save_image_grid, to_rgb
from mmjax.parallel import global_batch
from mmjax.storage import paths
from mmjax.tokenizers import MODALITIES, Tokenizer, build_autoencoder
from mmjax.train.config_record import to_dict
from mmjax.train.loop import Trainer
from mmjax.train.state import TrainState, all_finite
from mmjax.train.tokenizer_objective import TokenizerObjective


class TokenizerTrainer(Trainer):
    kind = "tokenizer"
    throughput_name = "images_per_s"

    def __init__(self, config, workdir: str | None = None, devices=None):
        """workdir: None for a trainer that only lowers, compiles or runs steps; devices: the
        devices of the mesh (default: all)."""
        self.modality = config.modality
        if self.modality not in MODALITIES:
            raise ValueError(
                f"config.modality must be one of {tuple(MODALITIES)}, got {self.modality!r}"
            )
        super().__init__(config, workdir, devices)
        self.name = f"tokenizer[{self.modality}]"
        self.codec = MODALITIES[self.modality]
        self.model = build_autoencoder(config.model, config.quantizer, self.modality)
        self.objective = TokenizerObjective(self.model, self.codec, config)
        self._val_ds = None
        self.val_raw = self._validation_batch()
        self.usage_raw, self._encode, self._eval_fn = self._usage_set(), None, None

    # -- data ---------------------------------------------------------------------------
    def _validation_config(self) -> dict:
        """The data config whose validation part evaluation reads: the training source's
        held-out data (scenes: the split `eval.split` unless data.eval_split names one)."""
        data = to_dict(self.config.data)
        if data.get("source") == "scenes" and not data.get("eval_split"):
            data["eval_split"] = self.config.eval.get("split", "validation")
        return data

    def _validation_images(self, n: int) -> np.ndarray | None:
        """The first `n` validation images (fewer if the validation data is smaller), at the
        evaluation policy (centre crop to data.resolution for images of any size)."""
        if n <= 0:
            return None
        if self._val_ds is None:
            self._val_ds = eval_dataset(self._validation_config(), "validation")
        n = min(n, len(self._val_ds))
        raw = np.stack([np.asarray(self._val_ds[i][self.modality]) for i in range(n)])
        self.codec.validate(raw)
        return raw

    def _validation_batch(self) -> np.ndarray:
        return self._validation_images(max(int(self.config.eval.num_images), 1))

    def _usage_set(self) -> np.ndarray:
        """Validation images for codebook usage: enough tokens that a well-used codebook can
        show it (a batch of 512 tokens cannot hit 90% of 1000 codes)."""
        return self._validation_images(int(self.config.eval.get("usage_images", 0)))

    def _codebook_usage(self, params, stats, batch_size: int = 64) -> dict:
        """usage (fraction of codes hit) and perplexity of the code histogram over the usage
        set, per quantizer level for residual quantizers (then averaged)."""
        if self.usage_raw is None:
            return {}
        if self._encode is None:
            self._encode = jax.jit(
                lambda p, s, raw: self.model.apply(
                    {"params": p, **s}, self.codec.preprocess(raw), method="encode"
                ),
                out_shardings=self.replicated,  # readable on every process
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

    def _batch_spec(self):
        example = self.val_raw[0]
        return jax.ShapeDtypeStruct((self.config.data.batch_size, *example.shape), example.dtype)

    def _pipeline(self):
        return pipeline_from_config(self.config.data)

    def _global_batch(self, host_batch):
        return self._global(host_batch[self.modality])

    # -- steps --------------------------------------------------------------------------
    def _train_step(self, state: TrainState, raw, key):
        obj = self.objective
        loss, grads, (terms, q, new_stats, y) = obj.generator_grads(
            state.params, state.stats, raw, key, state.step, state.disc_params
        )
        ok, extra = True, {}
        if obj.uses_gan:
            real = self.codec.preprocess(raw)
            disc_params, disc_opt_state, d_loss, d_grads = obj.disc_update(
                state.disc_params, state.disc_opt_state, real, y, state.step
            )
            ok = jnp.isfinite(d_loss) & all_finite(d_grads)
            extra = {"disc_params": disc_params, "disc_opt_state": disc_opt_state}
            terms = {**terms, "gan/d_loss": d_loss}
        state = self.apply_gradients(state, loss, grads, new_stats, ok, **extra)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": self.schedule(state.step),
            **terms,
            **{f"quantizer/{k}": v for k, v in q.metrics.items()},
        }
        return state, metrics

    def _eval_step(self, params, stats, raw):
        y, q = self.model.apply({"params": params, **stats}, self.codec.preprocess(raw))
        return self.codec.postprocess(y), q.metrics

    def _metadata(self) -> dict:
        return {
            "modality": self.modality,
            "model": to_dict(self.config.model),
            "quantizer": to_dict(self.config.quantizer),
        }

    def _progress(self, host: dict) -> dict:
        return {"loss": f"{host['loss']:.4f}", "usage": f"{host.get('quantizer/usage', 0):.2f}"}

    def _judges(self) -> dict:
        """The LPIPS and Inception networks of eval.lpips_weights / eval.fid_weights (loaded
        once; absent when not configured)."""
        if not hasattr(self, "_judge_nets"):
            self._judge_nets = {}
            lpips_path = self.config.eval.get("lpips_weights", "")
            fid_path = self.config.eval.get("fid_weights", "")
            if lpips_path:
                from mmjax.eval.lpips import LPIPS

                self._judge_nets["lpips"] = LPIPS.load(lpips_path)
            if fid_path:
                from mmjax.eval.fid import FidInception

                self._judge_nets["fid"] = FidInception.load(fid_path)
        return self._judge_nets

    def _evaluate(self, state, writer, step, save_grid=True) -> dict:
        if self._eval_fn is None:
            self._eval_fn = jax.jit(self._eval_step, out_shardings=self.replicated)
        params = self.eval_params(state)
        recon, qmetrics = self._eval_fn(params, state.stats, jnp.asarray(self.val_raw))
        recon = np.asarray(jax.device_get(recon))
        metrics = {
            f"eval/{k}": v
            for k, v in reconstruction_metrics(self.modality, self.val_raw, recon).items()
        }
        if self.modality == "rgb":  # the metrics python -m mmjax.eval.reconstruction reports
            quality = image_quality_metrics(self.val_raw, np.clip(recon, 0, 1), **self._judges())
            for k in ("ssim", "ms_ssim", "lpips", "rfid"):
                if quality.get(k) is not None:
                    metrics[f"eval/{k}"] = float(quality[k])
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
            with paths.open_read(grid) as f:
                image = np.asarray(Image.open(f).convert("RGB")) / 255.0
            writer.write_images(step, {"eval/reconstructions": image})
        return metrics

    def _export(self, state):
        params = self.eval_params(state)
        Tokenizer.save(
            os.path.join(self.workdir, "tokenizer"),
            modality=self.modality,
            model_config=to_dict(self.config.model),
            quantizer_config=to_dict(self.config.quantizer),
            resolution=self.config.data.resolution,
            variables={"params": params, **state.stats},  # each process writes its shards
            sharding_rules=self.rules,
            data=describe_source(self.config.data),
        )


def train_tokenizer(config, workdir: str) -> dict:
    return TokenizerTrainer(config, workdir).run()
