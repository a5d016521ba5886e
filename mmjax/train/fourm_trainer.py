"""The 4M trainer: pre-tokenized data -> Grain with 4M masking in the workers -> the FourM
encoder-decoder, trained with the per-modality cross-entropy on the mesh from `config.mesh`.

Shares the loop with the tokenizer trainer (`mmjax.train.loop`): state born sharded, donated
step, non-finite guard, Orbax resume with the data iterator's position, metrics, progress bar.
Adds gradient accumulation (microbatches stay evenly sharded over the data axes; losses,
gradients and metrics add up exactly to the whole batch's, see `mmjax.fourm.loss`), a
schedule measured in tokens, validation loss and accuracy per modality, and finally exports
the 4M bundle to `workdir/fourm` (`mmjax.fourm.bundle.load_fourm`).
"""

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.data.pipeline import host_iterator
from mmjax.data.pretokenized import PretokenizedSource, load_manifest
from mmjax.fourm import FourMMasking, build_fourm, build_registry, fourm7_modalities
from mmjax.fourm.bundle import save_fourm
from mmjax.fourm.loss import fourm_loss, target_counts
from mmjax.fourm.modalities import IMAGE_TOKEN_KINDS
from mmjax.fourm.model import DEC_KEYS, ENC_KEYS
from mmjax.parallel import global_batch
from mmjax.pretokenize import registry_config_from_manifest
from mmjax.train.config_checks import check_config
from mmjax.train.config_record import to_dict
from mmjax.train.fourm_init import params_from_bundle
from mmjax.train.loop import Trainer
from mmjax.train.state import TrainState

# Metrics that count rather than average: equal in every microbatch, never summed.
_COUNTS = ("count/", "num_tokens", "num_modalities")


def resolve_token_schedule(config) -> ml_collections.ConfigDict:
    """A copy of `config` whose total_steps and optimizer.warmup_steps come from
    total_tokens and optimizer.warmup_tokens when those are > 0."""
    config = ml_collections.ConfigDict(to_dict(config))
    per_step = config.data.batch_size * (config.masking.input_budget + config.masking.target_budget)
    if config.get("total_tokens", 0) > 0:
        config.total_steps = max(math.ceil(config.total_tokens / per_step), 1)
    if config.optimizer.get("warmup_tokens", 0) > 0:
        config.optimizer.warmup_steps = math.ceil(config.optimizer.warmup_tokens / per_step)
    return config


class FourMTrainer(Trainer):
    kind = "fourm"
    name = "4M"
    throughput_name = "tokens_per_s"

    def __init__(self, config, workdir: str | None = None, devices=None):
        """workdir: None for a trainer that only lowers, compiles or runs steps; devices: the
        devices of the mesh (default: all)."""
        check_config(config)  # before the token schedule divides by the budgets
        config = resolve_token_schedule(config)
        super().__init__(config, workdir, devices)
        self.source, self.manifest = None, None
        if config.data.path:
            # () or None: every modality in the manifest
            names = config.data.get("modalities", None) or None
            self.source = PretokenizedSource(config.data.path, names)
            self.manifest = self.source.manifest
        self.modalities = self._modalities()
        self.registry = build_registry(self.modalities)
        if self.source is not None:
            missing = [n for n in self.registry.names if n not in self.source.modalities]
            if missing:
                raise ValueError(
                    f"config.modalities names {missing}, which the data {config.data.path} "
                    f"does not hold; it has {self.source.modalities}"
                )
        self.model_config = {**to_dict(config.model), "sharding_rules": self.rules}
        self.model = build_fourm(self.model_config, self.registry)
        self.input_budget = int(config.masking.input_budget)
        self.target_budget = int(config.masking.target_budget)
        for what, budget, kinds in (
            ("input_budget", self.input_budget, (*IMAGE_TOKEN_KINDS, "sequence", "pixels")),
            ("target_budget", self.target_budget, (*IMAGE_TOKEN_KINDS, "sequence")),
        ):
            room = sum(s.num_tokens for s in self.registry if s.kind in kinds)
            if budget > room:
                raise ValueError(
                    f"masking.{what} ({budget}) is larger than the {room} tokens the "
                    f"modalities {list(self.registry.names)} can provide"
                )
        self.accum = int(config.get("grad_accum_steps", 1))
        replicas = math.prod(self.mesh.shape[a] for a in self.data_axes)
        b = config.data.batch_size
        if self.accum < 1 or b % (self.accum * replicas):
            raise ValueError(
                f"data.batch_size ({b}) must divide into grad_accum_steps ({self.accum}) "
                f"microbatches spread evenly over the {replicas} data-parallel devices"
            )
        self._masking, self._eval_batches, self._eval_fn = None, None, None

    # -- registry, data -----------------------------------------------------------------
    def _modalities(self) -> dict:
        if self.config.get("modalities", None):  # {} or None: from the manifest
            return to_dict(self.config.modalities)
        if self.manifest is None:
            return fourm7_modalities()
        max_lengths = self.config.data.get("max_lengths", None)
        max_lengths = to_dict(max_lengths) if max_lengths else {}
        val_path = self.config.data.get("val_path", "")
        if val_path:  # room for the longest sequence of either split
            val = load_manifest(val_path)["modalities"]
            for name, m in self.manifest["modalities"].items():
                if m["kind"] == "sequence" and name in val and name not in max_lengths:
                    max_lengths[name] = max(m["max_length"], val[name]["max_length"]) + 1
        return registry_config_from_manifest(
            self.manifest, self.source.modalities, max_lengths=max_lengths
        )

    @property
    def examples_per_step(self) -> int:  # tokens: what the throughput counts
        return self.config.data.batch_size * (self.input_budget + self.target_budget)

    def masking(self) -> FourMMasking:
        if self._masking is None:
            from mmjax.text import TextTokenizer

            if self.manifest is None:
                raise ValueError("the 4M trainer needs data: set --config.data.path=DIR")
            text = TextTokenizer.load(self.manifest["text_tokenizer"])
            m = self.config.masking
            # {} or None: no caps; one int caps every modality
            caps = lambda v: (to_dict(v) or None) if hasattr(v, "to_dict") else v
            self._masking = FourMMasking(
                self.registry,
                self.input_budget,
                self.target_budget,
                mixture=m.mixture if isinstance(m.mixture, str) else list(m.mixture),
                sentinel_ids=text.sentinel_ids,
                eos_id=text.eos_id,
                pad_id=text.pad_id,
                max_input_tokens=caps(m.get("max_input_tokens", None)),
                max_target_tokens=caps(m.get("max_target_tokens", None)),
                span_mean_length=m.get("span_mean_length", 3.0),
                budget_rule=m.get("budget_rule", "fill"),
                span_rule=m.get("span_rule", "t5"),
                ar_rate_1d=m.get("ar_rate_1d", 0.5),
            )
        return self._masking

    def _pipeline(self):
        if self.source is None:
            raise ValueError("the 4M trainer needs data: set --config.data.path=DIR")
        return host_iterator(self.source, self.config.data, self.masking())

    def _global_batch(self, host_batch):
        return global_batch(host_batch, self.mesh, self.data_axes)

    def _batch_spec(self):
        b, e, t = self.config.data.batch_size, self.input_budget, self.target_budget
        spec = {}
        for k in (*ENC_KEYS, *DEC_KEYS, "dec_target_tokens"):
            n = e if k.startswith("enc") else t
            spec[k] = jax.ShapeDtypeStruct((b, n), bool if k.endswith("mask") else np.int32)
        for s in self.registry:
            if s.kind == "pixels":
                shape = (b, *s.image_size, s.channels)
                spec[f"pixels_{s.name}"] = jax.ShapeDtypeStruct(shape, np.float32)
        return spec

    # -- state, step --------------------------------------------------------------------
    def _init_state(self, key, batch):
        params = self.model.init(key, batch)["params"]
        return TrainState.create(params, self.tx.init(params), {}, self.ema_decay > 0)

    def init_state(self, first_batch, shardings=None):
        """The fresh train state; with `config.model_init` (a 4M bundle) its parameters (and
        their EMA) are the bundle's."""
        state = super().init_state(first_batch, shardings)
        source = self.config.get("model_init", "")
        if not source:
            return state
        params = params_from_bundle(source, state.params, self.registry, self.mesh, self.rules)
        ema = None if state.ema_params is None else jax.tree.map(jnp.copy, params)
        return state.replace(params=params, ema_params=ema)

    def _loss(self, params, batch, counts):
        logits = self.model.apply({"params": params}, batch)
        return fourm_loss(logits, batch, self.registry, self.config.loss.per_token, counts)

    def _microbatches(self, batch):
        """[B, ...] -> [k, B/k, ...]: microbatch j holds rows j, j + k, ..., so every device
        keeps its own rows and the microbatches stay evenly sharded over the data axes."""
        k = self.accum
        sharding = NamedSharding(self.mesh, P(None, self.data_axes))

        def split(x):
            x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
            return jax.lax.with_sharding_constraint(x, sharding)

        return jax.tree.map(split, batch)

    def _train_step(self, state: TrainState, batch, key):
        del key  # no dropout; masking is done on the host
        counts = target_counts(batch, self.registry)
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)
        if self.accum == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, counts)
        else:
            micro = self._microbatches(batch)
            first = grad_fn(state.params, jax.tree.map(lambda x: x[0], micro), counts)

            def body(carry, mb):
                return jax.tree.map(jnp.add, carry, grad_fn(state.params, mb, counts)), None

            rest = jax.tree.map(lambda x: x[1:], micro)
            ((loss, metrics), grads), _ = jax.lax.scan(body, first, rest)
            counted = first[0][1]
            metrics = {k: counted[k] if k.startswith(_COUNTS) else v for k, v in metrics.items()}
        state = self.apply_gradients(state, loss, grads)
        return state, {**metrics, **self.update_metrics(state, grads)}

    # -- evaluation, export -------------------------------------------------------------
    def _metadata(self) -> dict:
        return {
            "model": to_dict(self.config.model),
            "modalities": self.modalities,
            "input_budget": self.input_budget,
            "target_budget": self.target_budget,
        }

    def _progress(self, host: dict) -> dict:
        return {"loss": f"{host['loss']:.4f}", "acc": f"{host['acc']:.3f}"}

    def eval_batches(self) -> list[dict]:
        """The validation set, masked once with a fixed seed: host batches of eval.batch_size
        (the last one padded with examples whose targets are all masked out)."""
        if self._eval_batches is None:
            cfg = self.config.eval
            path = self.config.data.get("val_path", "") or self.config.data.path
            source = PretokenizedSource(path, self.registry.names)
            n = min(int(cfg.num_examples), len(source))
            masking = self.masking()
            examples = [
                masking(source[i], np.random.default_rng([self.config.seed, 1234, i]))
                for i in range(n)
            ]
            size = int(cfg.batch_size)
            while len(examples) % size:
                pad = dict(examples[0])
                pad["dec_mask"] = np.zeros_like(pad["dec_mask"])
                examples.append(pad)
            self._eval_batches = [
                {k: np.stack([ex[k] for ex in examples[i : i + size]]) for k in examples[0]}
                for i in range(0, len(examples), size)
            ]
        return self._eval_batches

    def _evaluate(self, state, writer, step, save_grid=True) -> dict:
        del save_grid
        if self._eval_fn is None:
            self._eval_fn = jax.jit(
                lambda p, b: self._loss(p, b, None)[1], out_shardings=self.replicated
            )
        params = self.eval_params(state)
        totals: dict[str, float] = {}
        hosts, host = jax.process_count(), jax.process_index()
        if self.config.eval.batch_size % hosts:
            raise ValueError(
                f"eval.batch_size ({self.config.eval.batch_size}) must divide over {hosts} hosts"
            )
        for batch in self.eval_batches():
            rows = len(batch["dec_mask"]) // hosts
            local = {k: v[host * rows : (host + 1) * rows] for k, v in batch.items()}
            m = jax.device_get(self._eval_fn(params, self._global_batch(local)))
            for s in self.registry:
                if not s.is_target:
                    continue
                c = float(m[f"count/{s.name}"])
                for key in ("loss", "acc"):
                    name = f"{key}/{s.name}"
                    totals[name] = totals.get(name, 0.0) + float(m[name]) * c
                totals[f"count/{s.name}"] = totals.get(f"count/{s.name}", 0.0) + c
        metrics = {}
        for s in self.registry:
            c = totals.get(f"count/{s.name}", 0.0)
            if not s.is_target or c == 0:
                continue
            metrics[f"eval/loss/{s.name}"] = totals[f"loss/{s.name}"] / c
            metrics[f"eval/acc/{s.name}"] = totals[f"acc/{s.name}"] / c
            metrics[f"eval/uniform_loss/{s.name}"] = math.log(s.vocab_size)
        losses = [v for k, v in metrics.items() if k.startswith("eval/loss/")]
        metrics["eval/loss"] = float(np.mean(losses)) if losses else float("nan")
        writer.write_scalars(step, metrics)
        return metrics

    def _export(self, state):
        info = {}
        if self.manifest is not None:
            info = {
                "text_tokenizer": self.manifest.get("text_tokenizer"),
                "data": self.source.out_dir,
                "resolution": self.manifest.get("resolution"),
            }
        save_fourm(
            os.path.join(self.workdir, "fourm"),
            model_config=to_dict(self.config.model),
            modalities=self.modalities,
            params=self.eval_params(state),
            input_budget=self.input_budget,
            target_budget=self.target_budget,
            sharding_rules=self.rules,
            **info,
        )


def train_fourm(config, workdir: str) -> dict:
    """Trains (or resumes) a 4M model in `workdir`; returns the final eval metrics."""
    return FourMTrainer(config, workdir).run()
