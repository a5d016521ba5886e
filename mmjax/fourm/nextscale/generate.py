"""Next-scale generation (VAR): one forward pass per scale, every token of a scale drawn at
once from the logits of the prefix [condition][scales so far][this scale's input], then its
codes added to the accumulated map that gives the next scale's input. Temperature, top-k and
top-p filtering (`mmjax.fourm.generation.sampling`) and classifier-free guidance: logits =
uncond + guidance * (cond - uncond), the unconditional pass being the same prompt with its
condition masked out, as the model saw dropped conditions in training."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.fourm.generation.sampling import combine_logits, sample
from mmjax.fourm.nextscale.layout import add_codes, scale_code_map, scale_input, scale_offsets
from mmjax.fourm.nextscale.model import CODES, NextScale


def _check(model: NextScale, cond, cond_mask, temperature, top_k, top_p, guidance) -> None:
    cond, cond_mask = np.shape(cond), np.shape(cond_mask)
    if len(cond) != 2 or cond != cond_mask or cond[1] > model.cond_length:
        raise ValueError(
            f"generate: cond and cond_mask must be [B, L] with L <= {model.cond_length}, got "
            f"{cond} and {cond_mask}"
        )
    for name, value, ok in (
        ("temperature", temperature, temperature >= 0),
        ("top_k", top_k, top_k >= 0),
        ("top_p", top_p, 0 < top_p <= 1),
        ("guidance", guidance, np.isfinite(guidance)),
    ):
        if not ok:
            raise ValueError(f"generate: {name}={value!r} is out of range")


@functools.lru_cache(maxsize=16)
def _sampler(model: NextScale, guided: bool):
    scales, offsets = model.scales, scale_offsets(model.scales)

    def run(variables, cond, cond_mask, key, temperature, top_k, top_p, guidance):
        b = cond.shape[0]
        if guided:  # the conditional and unconditional passes as one batch
            cond = jnp.concatenate([cond, cond])
            cond_mask = jnp.concatenate([cond_mask, jnp.zeros_like(cond_mask)])
        table = variables[CODES]["table"].astype(jnp.float32)
        side, dim = scales[-1], table.shape[-1]
        total = jnp.zeros((b, side, side, dim), jnp.float32)
        inputs = jnp.zeros((b, scales[0] ** 2, dim), jnp.float32)
        tokens = []
        for i, s in enumerate(scales):
            x = jnp.concatenate([inputs, inputs]) if guided else inputs
            logits = model.apply(variables, cond, cond_mask, x, method="logits")
            logits = logits[:, offsets[i] : offsets[i + 1]]
            if guided:
                pair = jnp.stack([logits[:b], logits[b:]])
                logits = combine_logits(pair, jnp.stack([guidance, 1.0 - guidance]))
            idx = sample(jax.random.fold_in(key, i), logits, temperature, top_k, top_p)
            tokens.append(idx)
            if i + 1 < len(scales):
                total = add_codes(total, scale_code_map(table, idx, i, s), model.upsample)
                inputs = jnp.concatenate([inputs, scale_input(total, scales[i + 1])], axis=1)
        return jnp.concatenate(tokens, axis=1)

    return jax.jit(run)


def generate(
    model: NextScale,
    variables: dict,
    cond,
    cond_mask,
    key: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    guidance: float = 1.0,
) -> jax.Array:
    """int32 [B, sum(s * s)] token pyramids (scale by scale, the Tokenizer's `encode`
    order) for conditions cond int [B, L] / cond_mask bool [B, L] (`pad_conditions`).

    temperature 0 is greedy; top_k 0 and top_p 1 filter nothing; guidance 1 is no guidance
    (one pass per scale), otherwise two (conditional and unconditional) in one batch.
    """
    _check(model, cond, cond_mask, temperature, top_k, top_p, guidance)
    run = _sampler(model, float(guidance) != 1.0)
    return run(
        variables,
        jnp.asarray(cond, jnp.int32),
        jnp.asarray(cond_mask, bool),
        key,
        jnp.float32(temperature),
        jnp.int32(top_k),
        jnp.float32(top_p),
        jnp.float32(guidance),
    )
