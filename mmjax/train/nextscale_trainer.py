"""The next-scale trainer (VAR): pre-tokenized multi-scale token pyramids and their captions
-> Grain (conditions padded in the workers) -> `NextScale`, trained with teacher forcing:
the cross-entropy of every token of every scale given the condition and the earlier scales'
accumulated codes. The condition is dropped (masked out) for a `condition.dropout` share of
the examples, drawn in the step, so the same model scores the unconditional pass of
classifier-free guidance.

Shares the loop with the other trainers (`mmjax.train.loop`): state born sharded, donated
step, non-finite guard, Orbax resume with the data iterator's position, metrics, progress bar.
The tokenizer bundle named in the data's manifest (or `data.tokenizer`) gives the token
layout and the code table (copied into the state's `codes` collection, never trained). Logs
the validation loss and accuracy, overall and per scale, and exports the bundle to
`workdir/nextscale` (`mmjax.fourm.nextscale.load_nextscale`).
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data.pipeline import host_iterator
from mmjax.data.pretokenized import PretokenizedSource
from mmjax.fourm.nextscale import (
    CODES,
    NextScaleExample,
    build_nextscale,
    code_table,
    save_nextscale,
    tokenizer_layout,
)
from mmjax.fourm.nextscale.layout import scale_offsets
from mmjax.parallel import global_batch
from mmjax.train.config_record import to_dict
from mmjax.train.loop import Trainer
from mmjax.train.state import TrainState


def token_losses(logits, tokens, scales) -> dict:
    """{"loss", "acc", "loss/scale_<s>", "acc/scale_<s>"}: mean cross-entropy (nats) and
    argmax accuracy over all tokens and per scale; logits [B, N, K], tokens [B, N]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]  # [B, N]
    hit = (jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32)
    out = {"loss": jnp.mean(nll), "acc": jnp.mean(hit)}
    offsets = scale_offsets(scales)
    for i, s in enumerate(scales):
        out[f"loss/scale_{s}"] = jnp.mean(nll[:, offsets[i] : offsets[i + 1]])
        out[f"acc/scale_{s}"] = jnp.mean(hit[:, offsets[i] : offsets[i + 1]])
    return out


class NextScaleTrainer(Trainer):
    kind = "nextscale"
    name = "next-scale"

    def __init__(self, config, workdir: str | None = None, devices=None):
        super().__init__(config, workdir, devices)
        from mmjax.text import TextTokenizer
        from mmjax.tokenizers import Tokenizer

        data = config.data
        if not data.path:
            raise ValueError("the next-scale trainer needs data: set --config.data.path=DIR")
        self.tokens_name, self.condition_name = data.tokens, data.condition
        self.source = PretokenizedSource(data.path, [self.tokens_name, self.condition_name])
        mods = self.source.manifest["modalities"]
        spec, cond = mods[self.tokens_name], mods[self.condition_name]
        if not spec.get("scales"):
            raise ValueError(
                f"data.tokens {self.tokens_name!r} of {data.path} holds no multi-scale tokens "
                "(no scales in its manifest); pre-tokenize with a quantizer=msrvq tokenizer"
            )
        if cond["kind"] != "sequence":
            raise ValueError(
                f"data.condition {self.condition_name!r} is a {cond['kind']} modality; expected "
                "a token sequence (caption, metadata, ...)"
            )
        self.tokenizer_dir = data.get("tokenizer", "") or spec["tokenizer"]
        if not self.tokenizer_dir:
            raise ValueError(f"{data.path} names no tokenizer bundle: set --config.data.tokenizer")
        tokenizer = Tokenizer.load(self.tokenizer_dir)
        self.layout = tokenizer_layout(tokenizer)
        if list(self.layout["scales"]) != list(spec["scales"]):
            raise ValueError(
                f"tokenizer {self.tokenizer_dir} has scales {self.layout['scales']}, but the "
                f"data's {self.tokens_name!r} holds scales {spec['scales']}"
            )
        length = int(config.condition.max_length)
        if cond["max_length"] > length:
            raise ValueError(
                f"condition.max_length ({length}) is shorter than the longest "
                f"{self.condition_name!r} record of {data.path} ({cond['max_length']} tokens)"
            )
        self.layout.update(cond_vocab=int(cond["vocab_size"]), cond_length=length)
        self.table = code_table(tokenizer)
        self.text_tokenizer = cond["tokenizer"]
        self.pad_id = TextTokenizer.load(self.text_tokenizer).pad_id
        self.model = build_nextscale(
            {**to_dict(config.model), "sharding_rules": self.rules}, **self.layout
        )
        self.dropout = float(config.condition.dropout)
        self._eval_batches, self._eval_fn = None, None

    def _transform(self) -> NextScaleExample:
        return NextScaleExample(
            self.tokens_name, self.condition_name, self.layout["cond_length"], self.pad_id
        )

    def _pipeline(self):
        return host_iterator(self.source, self.config.data, self._transform())

    def _global_batch(self, host_batch):
        return global_batch(host_batch, self.mesh, self.data_axes)

    def _batch_spec(self):
        b, n, length = self.config.data.batch_size, self.model.num_tokens, self.model.cond_length
        return {
            "tokens": jax.ShapeDtypeStruct((b, n), np.int32),
            "cond": jax.ShapeDtypeStruct((b, length), np.int32),
            "cond_mask": jax.ShapeDtypeStruct((b, length), bool),
        }

    # -- state, step --------------------------------------------------------------------
    def _init_state(self, key, batch):
        variables = self.model.init(key, batch["cond"], batch["cond_mask"], batch["tokens"])
        params = variables["params"]
        stats = {CODES: {"table": jnp.asarray(self.table)}}
        return TrainState.create(params, self.tx.init(params), stats, self.ema_decay > 0)

    def _loss(self, params, stats, batch, key=None):
        """Teacher-forced loss; with `key`, each example's condition is dropped with
        probability condition.dropout."""
        mask = batch["cond_mask"]
        if key is not None and self.dropout > 0:
            drop = jax.random.bernoulli(key, self.dropout, (mask.shape[0],))
            mask = mask & ~drop[:, None]
        variables = {"params": params, **stats}
        logits = self.model.apply(variables, batch["cond"], mask, batch["tokens"])
        metrics = token_losses(logits, batch["tokens"], self.model.scales)
        return metrics["loss"], metrics

    def _train_step(self, state: TrainState, batch, key):
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)
        (loss, metrics), grads = grad_fn(state.params, state.stats, batch, key)
        state = self.apply_gradients(state, loss, grads)
        return state, {**metrics, **self.update_metrics(state, grads)}

    # -- evaluation, export -------------------------------------------------------------
    def _metadata(self) -> dict:
        layout = {k: list(v) if isinstance(v, tuple) else v for k, v in self.layout.items()}
        return {"model": to_dict(self.config.model), "layout": layout}

    def _progress(self, host: dict) -> dict:
        return {"loss": f"{host['loss']:.4f}", "acc": f"{host['acc']:.3f}"}

    def eval_batches(self) -> list[dict]:
        """The first eval.num_examples validation records (data.val_path, else data.path) as
        host batches of eval.batch_size, with a weight per row (0 on the padding rows)."""
        if self._eval_batches is None:
            cfg, data = self.config.eval, self.config.data
            source = PretokenizedSource(
                data.get("val_path", "") or data.path, [self.tokens_name, self.condition_name]
            )
            n = min(int(cfg.num_examples), len(source))
            transform = self._transform()
            examples = [dict(transform(source[i]), weight=np.float32(1)) for i in range(n)]
            size = int(cfg.batch_size)
            while len(examples) % size:
                examples.append(dict(examples[0], weight=np.float32(0)))
            self._eval_batches = [
                {k: np.stack([ex[k] for ex in examples[i : i + size]]) for k in examples[0]}
                for i in range(0, len(examples), size)
            ]
        return self._eval_batches

    def _eval_sums(self, params, stats, batch):
        """Per-row loss and accuracy sums (overall and per scale), weighted."""
        variables = {"params": params, **stats}
        logits = self.model.apply(variables, batch["cond"], batch["cond_mask"], batch["tokens"])
        w = batch["weight"]
        rows = jax.vmap(lambda lg, t: token_losses(lg[None], t[None], self.model.scales))(
            logits, batch["tokens"]
        )
        return {k: jnp.sum(v * w) for k, v in rows.items()} | {"count": jnp.sum(w)}

    def _evaluate(self, state, writer, step, save_grid=True) -> dict:
        del save_grid
        if self._eval_fn is None:
            self._eval_fn = jax.jit(self._eval_sums, out_shardings=self.replicated)
        params = self.eval_params(state)
        hosts, host = jax.process_count(), jax.process_index()
        if self.config.eval.batch_size % hosts:
            raise ValueError(
                f"eval.batch_size ({self.config.eval.batch_size}) must divide over {hosts} hosts"
            )
        totals: dict[str, float] = {}
        for batch in self.eval_batches():
            rows = len(batch["weight"]) // hosts
            local = {k: v[host * rows : (host + 1) * rows] for k, v in batch.items()}
            sums = jax.device_get(self._eval_fn(params, state.stats, self._global_batch(local)))
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        count = max(totals.pop("count"), 1.0)
        metrics = {f"eval/{k}": v / count for k, v in totals.items()}
        metrics["eval/uniform_loss"] = math.log(self.model.codebook_size)
        writer.write_scalars(step, metrics)
        return metrics

    def _export(self, state):
        save_nextscale(
            os.path.join(self.workdir, "nextscale"),
            model_config=to_dict(self.config.model),
            layout=self.layout,
            variables={"params": self.eval_params(state), **state.stats},
            tokenizer=self.tokenizer_dir,
            text_tokenizer=self.text_tokenizer,
            condition=self.condition_name,
            tokens=self.tokens_name,
            data=self.source.out_dir,
            sharding_rules=self.rules,
        )


def train_nextscale(config, workdir: str) -> dict:
    """Trains (or resumes) a next-scale model in `workdir`; returns the final eval metrics."""
    return NextScaleTrainer(config, workdir).run()
