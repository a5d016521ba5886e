"""Nearest-code search as a Pallas Mosaic kernel for TPU: the N x K distances never leave VMEM.

Grid (N blocks, K blocks), K innermost. Each step computes a [block_k, block_n] tile of
`||c||^2 - 2 c.x` on the matrix unit (float32 accumulation) and folds it into a running
(min, argmin) per input row kept in VMEM scratch; the last K step writes the results.

The tile is computed transposed (codes on sublanes, inputs on lanes) so that reducing over
codes is a sublane reduction whose result is already lane-dense: the running min, argmin
and both outputs are [1, block_n] rows, stored with full-width vector stores.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mmjax.kernels.codebook_search.reference import full_distance, prepare

LANES = 128
# D is padded to this multiple: a full-extent last block dimension is legal for Mosaic at
# any size, but a multiple of 8 keeps the bf16/f32 operand layouts simple; padding to 128
# would quadruple the codebook's HBM traffic at D=32, re-read once per N block.
D_TILE = 8
DEFAULT_BLOCK_N = 512
DEFAULT_BLOCK_K = 1024


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _kernel(x_ref, c_ref, cn_ref, idx_ref, dist_ref, best_d, best_i, *, block_k, precision):
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _init():
        best_d[...] = jnp.full(best_d.shape, jnp.inf, jnp.float32)
        best_i[...] = jnp.zeros(best_i.shape, jnp.int32)

    # x arrives scaled by -2 (exact: a power of two), so the MXU gives -2 c.x directly.
    minus_two_dots = jax.lax.dot_general(  # [block_k, block_n]
        c_ref[...],
        x_ref[...],
        (((1,), (1,)), ((), ())),
        precision=precision,
        preferred_element_type=jnp.float32,
    )
    d = cn_ref[...] + minus_two_dots  # padded codes carry an infinite norm: never chosen
    tile_min = jnp.min(d, axis=0, keepdims=True)  # [1, block_n]
    rows = jax.lax.broadcasted_iota(jnp.int32, d.shape, 0) + j * block_k
    # Smallest code index attaining the minimum (no argmin in kernels: ties -> smallest).
    tile_idx = jnp.min(
        jnp.where(d == tile_min, rows, jnp.iinfo(jnp.int32).max), axis=0, keepdims=True
    )
    better = tile_min < best_d[...]  # strict: an earlier block keeps a tie
    best_d[...] = jnp.where(better, tile_min, best_d[...])
    best_i[...] = jnp.where(better, tile_idx, best_i[...])

    @pl.when(j == pl.num_programs(1) - 1)
    def _store():
        idx_ref[...] = best_i[...]
        dist_ref[...] = best_d[...]


def search_pallas_tpu(x, codebook, metric="l2", block_n=None, block_k=None, interpret=False):
    """x [N, D], codebook [K, D] (float32 or bfloat16) -> (int32 indices [N], float32
    squared distances [N]).

    block_n is rounded to a multiple of 128 (outputs are lane-dense), block_k to a multiple
    of 16 (bfloat16 sublane packing); D is zero-padded to a multiple of 128. `interpret`
    runs the kernel with TPU semantics on any backend (pass `pltpu.InterpretParams()` for
    the stricter TPU simulation, or True for the generic interpreter).
    """
    n, dim = x.shape
    k = codebook.shape[0]
    x, codebook, x_sq, c_sq = prepare(x, codebook, metric)
    dtype = jnp.promote_types(x.dtype, codebook.dtype)
    x, codebook = x.astype(dtype), codebook.astype(dtype)
    block_n = _round_up(min(block_n or DEFAULT_BLOCK_N, _round_up(n, LANES)), LANES)
    block_k = _round_up(min(block_k or DEFAULT_BLOCK_K, _round_up(k, 16)), 16)
    n_pad, k_pad, d_pad = _round_up(n, block_n), _round_up(k, block_k), _round_up(dim, D_TILE)
    # Zero padding of D changes neither dots nor norms; padded rows are sliced off; padded
    # codes get +inf norm so that they lose even against all-zero inputs.
    x_p = jnp.pad(-2 * x, ((0, n_pad - n), (0, d_pad - dim)))
    c_p = jnp.pad(codebook, ((0, k_pad - k), (0, d_pad - dim)))
    cn_p = jnp.pad(c_sq, (0, k_pad - k), constant_values=jnp.inf)[:, None]  # [K_pad, 1]
    precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
    grid = (n_pad // block_n, k_pad // block_k)
    idx, dist = pl.pallas_call(
        functools.partial(_kernel, block_k=block_k, precision=precision),
        grid=grid,
        in_specs=[
            pl.BlockSpec((block_n, d_pad), lambda i, j: (i, 0)),
            pl.BlockSpec((block_k, d_pad), lambda i, j: (j, 0)),
            pl.BlockSpec((block_k, 1), lambda i, j: (j, 0)),
        ],
        out_specs=[
            pl.BlockSpec((1, block_n), lambda i, j: (0, i)),
            pl.BlockSpec((1, block_n), lambda i, j: (0, i)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((1, n_pad), jnp.int32),
            jax.ShapeDtypeStruct((1, n_pad), jnp.float32),
        ],
        scratch_shapes=[pltpu.VMEM((1, block_n), jnp.float32), pltpu.VMEM((1, block_n), jnp.int32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        cost_estimate=pl.CostEstimate(
            flops=2 * n_pad * k_pad * d_pad,
            transcendentals=0,
            bytes_accessed=x_p.nbytes + grid[0] * (c_p.nbytes + cn_p.nbytes) + 8 * n_pad,
        ),
        interpret=interpret,
    )(x_p, c_p, cn_p)
    return idx[0, :n], full_distance(dist[0, :n], x_sq)
