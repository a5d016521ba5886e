"""Nearest-code search that never materializes the N x K distance matrix.

A `lax.map` walks the rows in blocks of `block_n`; for each, a `lax.scan` walks the
codebook in chunks of `block_k` codes keeping a running (min, argmin) per row. Peak
temporary memory is about block_n x block_k float32 instead of N x K.
"""

import jax
import jax.numpy as jnp

from mmjax.kernels.codebook_search.reference import (
    first_min,
    full_distance,
    partial_distances,
    prepare,
)

# Tiles of 1024 x 2048 float32 (8 MiB) measured fastest on CPU (benchmarks/RESULTS.md):
# the distance tile stays in cache between the matmul and the min reductions.
DEFAULT_BLOCK_N = 1024
DEFAULT_BLOCK_K = 2048


def _pad_rows(a: jax.Array, multiple: int, value=0.0) -> jax.Array:
    pad = (-a.shape[0]) % multiple
    if pad == 0:
        return a
    widths = [(0, pad)] + [(0, 0)] * (a.ndim - 1)
    return jnp.pad(a, widths, constant_values=value)


def _search_rows(x, x_sq, code_blocks, norm_blocks, block_k):
    """Running min/argmin of one row block over all codebook chunks."""
    n = x.shape[0]

    def step(carry, chunk):
        best_d, best_i = carry
        j, codes, norms = chunk
        d = partial_distances(x, codes, norms)  # [n, block_k]
        local_i, local_d = first_min(d)  # smallest index within the chunk
        # Strict '<': a later chunk wins only if strictly closer, so ties keep the
        # smallest index across chunks as well as within one.
        better = local_d < best_d
        best_d = jnp.where(better, local_d, best_d)
        best_i = jnp.where(better, local_i + j * block_k, best_i)
        return (best_d, best_i), None

    init = (jnp.full((n,), jnp.inf, jnp.float32), jnp.zeros((n,), jnp.int32))
    chunk_ids = jnp.arange(code_blocks.shape[0], dtype=jnp.int32)
    (best_d, best_i), _ = jax.lax.scan(step, init, (chunk_ids, code_blocks, norm_blocks))
    return best_i, full_distance(best_d, x_sq)


def search_chunked(x, codebook, metric, block_n=None, block_k=None):
    """[N, D], [K, D] -> (int32 indices [N], float32 squared distances [N])."""
    n, k = x.shape[0], codebook.shape[0]
    block_k = min(block_k or DEFAULT_BLOCK_K, k)
    block_n = block_n or DEFAULT_BLOCK_N
    x, codebook, x_sq, c_sq = prepare(x, codebook, metric)
    # Padded codes get an infinite norm, so they never win (not even against an
    # all-zero input, whose distance to a zero padding code would be 0).
    code_blocks = _pad_rows(codebook, block_k).reshape(-1, block_k, codebook.shape[1])
    norm_blocks = _pad_rows(c_sq, block_k, value=jnp.inf).reshape(-1, block_k)
    if block_n >= n:
        return _search_rows(x, x_sq, code_blocks, norm_blocks, block_k)
    xb = _pad_rows(x, block_n).reshape(-1, block_n, x.shape[1])
    xsb = _pad_rows(x_sq, block_n).reshape(-1, block_n)
    idx, dist = jax.lax.map(
        lambda a: _search_rows(a[0], a[1], code_blocks, norm_blocks, block_k), (xb, xsb)
    )
    return idx.reshape(-1)[:n], dist.reshape(-1)[:n]
