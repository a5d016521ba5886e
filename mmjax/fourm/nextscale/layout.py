"""The token layout of next-scale prediction (VAR, Tian et al. 2024):
[condition tokens][scale 1 tokens][scale 2 tokens]..., each scale a square token map in
row-major order, the flat order of `MultiScaleResidualQuantizer`'s indices.

`block_causal_mask` says who attends to whom: a token of scale s sees the valid condition
tokens and every token of scales <= s (its own scale too, so a scale is predicted in one
step); condition tokens see the valid condition tokens only. `next_scale_inputs` gives the
teacher-forcing input of every scale: the first scale gets none (the model's start
embedding), scale s > 1 the sum of the upsampled codes of scales < s, downsampled to s x s:
what the quantizer had left to explain when it reached scale s.
"""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.quantizers.multiscale import resize


def check_scales(owner: str, scales) -> tuple[int, ...]:
    """`scales` as a tuple of strictly increasing positive ints, else a ValueError."""
    scales = tuple(scales)
    ok = len(scales) > 0 and all(isinstance(s, int | np.integer) and s > 0 for s in scales)
    if not ok or list(scales) != sorted(set(scales)):
        raise ValueError(f"{owner}: scales must be strictly increasing positive ints, got {scales}")
    return tuple(int(s) for s in scales)


def scale_offsets(scales) -> np.ndarray:
    """[len(scales) + 1] int: where each scale's tokens start in the flat sequence (and the
    total at the end)."""
    return np.concatenate([[0], np.cumsum([s * s for s in scales])]).astype(np.int64)


def scale_ids(scales) -> np.ndarray:
    """[sum(s * s)] int32: the scale index of every token of the flat sequence."""
    return np.concatenate([np.full(s * s, i, np.int32) for i, s in enumerate(scales)])


def block_causal_mask(cond_mask: jax.Array, scales, num_tokens: int | None = None) -> jax.Array:
    """bool [B, 1, L + n, L + n] over [condition (L)][the first n scale tokens] (n: default
    all), True = may attend. cond_mask bool [B, L]: the valid condition tokens. Every token
    also sees itself, so no row is empty (a dropped condition's tokens see only themselves,
    and nobody sees them)."""
    ids = scale_ids(scales)
    ids = ids if num_tokens is None else ids[:num_tokens]
    cond_len = cond_mask.shape[1]
    sid = jnp.asarray(np.concatenate([np.full(cond_len, -1, np.int32), ids]))
    q, k = sid[:, None], sid[None, :]
    earlier_scale = (q >= 0) & (k >= 0) & (k <= q)  # [T, T]
    valid_key = jnp.concatenate(
        [jnp.asarray(cond_mask, bool), jnp.zeros((cond_mask.shape[0], len(ids)), bool)], axis=1
    )  # [B, T]: the condition tokens any query may see
    mask = earlier_scale[None] | valid_key[:, None, :] | jnp.eye(len(sid), dtype=bool)[None]
    return mask[:, None]


def scale_code_map(table: jax.Array, indices: jax.Array, scale_index: int, side: int):
    """The code map [B, side, side, D] of scale `scale_index` from its indices [B, side**2];
    table [levels, K, D] holds every index's code (one level for a shared codebook, else one
    per scale)."""
    level = table[0 if table.shape[0] == 1 else scale_index]
    return jnp.take(level, indices, axis=0).reshape(indices.shape[0], side, side, -1)


def code_maps(table: jax.Array, indices: jax.Array, scales) -> list[jax.Array]:
    """The code maps [B, s, s, D] of every scale of the pyramids indices [B, sum(s * s)]."""
    offsets = scale_offsets(scales)
    return [
        scale_code_map(table, indices[:, offsets[i] : offsets[i + 1]], i, s)
        for i, s in enumerate(scales)
    ]


def add_codes(total: jax.Array, codes: jax.Array, upsample: str) -> jax.Array:
    """The accumulated codes [B, S, S, D] plus one scale's code map upsampled to S x S, as
    `MultiScaleResidualQuantizer` sums them."""
    return total + resize(codes.astype(jnp.float32), total.shape[1], upsample)


def scale_input(total: jax.Array, side: int) -> jax.Array:
    """[B, S, S, D] accumulated codes -> [B, side * side, D], the next scale's input (area
    downsampling, as the quantizer downsamples its residual)."""
    x = resize(total, side, "linear")
    return x.reshape(x.shape[0], side * side, x.shape[-1])


def next_scale_inputs(maps: list[jax.Array], scales, upsample: str) -> jax.Array:
    """[B, sum(s * s), D] teacher-forcing inputs from the code maps of every scale (see the
    module docstring); the first scale's rows are zeros."""
    b, _, _, d = maps[0].shape
    side = scales[-1]
    total = jnp.zeros((b, side, side, d), jnp.float32)
    rows = [jnp.zeros((b, scales[0] ** 2, d), jnp.float32)]
    for i in range(1, len(scales)):
        total = add_codes(total, maps[i - 1], upsample)
        rows.append(scale_input(total, scales[i]))
    return jnp.concatenate(rows, axis=1)
