"""Nearest-code search as a Pallas Triton kernel for NVIDIA GPUs (the `pallas_gpu` path).

Why a kernel: the XLA paths either materialize the N x K distance matrix (`xla`) or walk
it chunk by chunk from HBM (`xla_chunked`). Here each program owns `block_n` rows of x and
streams the codebook through on-chip memory in `block_k`-code tiles, keeping the running
(min, argmin) of its rows in registers, so the distance tile never leaves the SM and HBM
traffic is just x, the codebook (L2-resident for usual codebook sizes) and two [N] outputs.

The kernel computes exactly the XLA formula: `prepare` (shared with the other paths)
normalizes for cosine and computes float32 norms, the kernel evaluates `||c||^2 - 2 x.c`
per element with a float32-accumulated dot, and ||x||^2 is added back outside with
`full_distance`. Ties resolve to the smallest index, as in every other path: within a tile
by taking the smallest index attaining the minimum, across tiles by a strict `<`.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from mmjax.kernels.codebook_search.reference import full_distance, prepare

# Rows per program. 128 rows x 128-256 codes is the tile size of Triton's own H100 matmul
# configurations: big enough to keep the tensor cores busy and to reuse each loaded code
# tile across many rows, small enough that the float32 distance tile (64-128 KiB, i.e.
# 64-128 registers per thread at 8 warps) fits in registers without spilling.
DEFAULT_BLOCK_N = 128
# Codes per loop step. With a small D the dot is cheap and the per-tile min/argmin
# reductions and loop overhead dominate, so a wider tile amortizes them; with a large D the
# [block_k, D] code tile itself is what must fit in shared memory, so it stays at 128.
DEFAULT_BLOCK_K_SMALL_D = 256
DEFAULT_BLOCK_K = 128
SMALL_D = 64
# Feature columns handled in one dot. Up to this many (padded) columns, x is loaded once
# per program and kept on chip for the whole codebook loop; beyond it, the dot is split
# into chunks of `_D_CHUNK` columns (x is then re-read per code tile, from L1/L2).
_MAX_SINGLE_D = 128
_D_CHUNK = 64
# Shared memory budget for the software-pipelined code tiles (H100 has 227 KiB per block;
# leave room for the dot operand of x and for Triton's reduction scratch).
_PIPELINE_SMEM_BYTES = 128 * 1024

# The Triton compiler-parameter class was renamed (TritonCompilerParams -> CompilerParams);
# accept either so the module imports on older and newer JAX alike.
_CompilerParams = getattr(plgpu, "CompilerParams", None) or plgpu.TritonCompilerParams


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _check_block(name: str, block: int) -> None:
    # Triton tensors must have power-of-two sizes, and its dot needs every dimension >= 16.
    if not isinstance(block, int) or block < 16 or block & (block - 1):
        raise ValueError(f"search_pallas_gpu: {name} must be a power of two >= 16, got {block!r}")


def _feature_blocking(d: int) -> tuple[int, int]:
    """(padded D, columns per dot chunk); zero columns change neither dots nor norms."""
    d16 = _round_up(max(d, 1), 16)  # the Triton dot needs a contraction of at least 16
    if d16 <= _MAX_SINGLE_D:
        # One chunk, so it must itself be a power of two.
        block_d = _next_pow2(d16)
        return block_d, block_d
    return _round_up(d, _D_CHUNK), _D_CHUNK


def _kernel(x_ref, codes_ref, norms_ref, idx_ref, dist_ref, *, block_k, block_d, num_k_blocks):
    """One program: block_n rows of x against the whole codebook, tile by tile."""
    block_n, d_pad = x_ref.shape
    num_d_chunks = d_pad // block_d
    # float32 inputs: IEEE float32 products (the Triton default would be TF32, which rounds
    # the inputs and breaks exact ties); bfloat16/float16 products are exact in float32.
    precision = jax.lax.Precision.HIGHEST if x_ref.dtype == jnp.float32 else None

    def dot_nt(a, b):  # a [n, d] . b[k, d]^T -> [n, k], accumulated in float32
        return jax.lax.dot_general(
            a,
            b,
            (((1,), (1,)), ((), ())),
            precision=precision,
            preferred_element_type=jnp.float32,
        )

    # With a single feature chunk, x is loaded once and stays on chip across the loop.
    x_whole = x_ref[...] if num_d_chunks == 1 else None
    # Column ids within a tile; block_k stands for "no match" (cannot happen: the tile
    # minimum is always attained, unless the tile holds a NaN).
    col = jax.lax.broadcasted_iota(jnp.int32, (block_n, block_k), 1)

    def k_step(j, carry):
        best_d, best_i = carry
        start = pl.multiple_of(j * block_k, block_k)
        if num_d_chunks == 1:
            dots = dot_nt(x_whole, codes_ref[pl.ds(start, block_k), :])
        else:

            def d_step(c, acc):
                d0 = pl.multiple_of(c * block_d, block_d)
                xs = x_ref[:, pl.ds(d0, block_d)]
                cs = codes_ref[pl.ds(start, block_k), pl.ds(d0, block_d)]
                return acc + dot_nt(xs, cs)

            zeros = jnp.zeros((block_n, block_k), jnp.float32)
            dots = jax.lax.fori_loop(0, num_d_chunks, d_step, zeros)
        # Same expression, same rounding as reference.partial_distances. Padding codes have
        # an infinite norm, so their distance is +inf and they never win.
        d = norms_ref[pl.ds(start, block_k)][None, :] - 2.0 * dots
        # min, then the smallest column attaining it: two plain reductions (no argmin),
        # which also fixes the tie rule inside the tile.
        tile_min = jnp.min(d, axis=1)
        tile_arg = jnp.min(jnp.where(d == tile_min[:, None], col, block_k), axis=1)
        # Strict '<': a later tile replaces the running best only if strictly closer, so
        # ties across tiles keep the earlier (smaller) index.
        better = tile_min < best_d
        best_d = jnp.where(better, tile_min, best_d)
        best_i = jnp.where(better, tile_arg + start, best_i)
        return best_d, best_i

    init = (jnp.full((block_n,), jnp.inf, jnp.float32), jnp.zeros((block_n,), jnp.int32))
    best_d, best_i = jax.lax.fori_loop(0, num_k_blocks, k_step, init)
    idx_ref[...] = best_i
    dist_ref[...] = best_d


def _compiler_params(block_n, block_k, block_d, num_d_chunks, itemsize):
    # 8 warps from a 128 x 128 distance tile up keeps it at <= 128 registers per thread.
    num_warps = 8 if block_n * block_k >= 128 * 128 else 4
    # Bytes each pipeline stage buffers for the innermost loop: the code tile, plus the x
    # chunk when x is re-read per chunk. Fewer stages when that would overflow shared memory.
    stage = block_k * block_d * itemsize
    if num_d_chunks > 1:
        stage += block_n * block_d * itemsize
    num_stages = max(1, min(3, _PIPELINE_SMEM_BYTES // stage))
    return _CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _search_padded(x, codes, norms, *, block_n, block_k, block_d, interpret):
    """x [Np, Dp], codes [Kp, Dp], norms [Kp] -> (int32 [Np], float32 partial min [Np])."""
    n_pad, d_pad = x.shape
    k_pad = codes.shape[0]
    num_d_chunks = d_pad // block_d
    kernel = functools.partial(
        _kernel, block_k=block_k, block_d=block_d, num_k_blocks=k_pad // block_k
    )
    return pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((n_pad,), jnp.int32),
            jax.ShapeDtypeStruct((n_pad,), jnp.float32),
        ),
        grid=(n_pad // block_n,),
        in_specs=[
            pl.BlockSpec((block_n, d_pad), lambda i: (i, 0)),
            # The whole codebook and its norms are visible to every program; the kernel
            # slices its own tiles out of them.
            pl.BlockSpec((k_pad, d_pad), lambda i: (0, 0)),
            pl.BlockSpec((k_pad,), lambda i: (0,)),
        ],
        out_specs=(
            pl.BlockSpec((block_n,), lambda i: (i,)),
            pl.BlockSpec((block_n,), lambda i: (i,)),
        ),
        compiler_params=_compiler_params(
            block_n, block_k, block_d, num_d_chunks, jnp.dtype(x.dtype).itemsize
        ),
        interpret=interpret,
        name="codebook_search",
    )(x, codes, norms)


def search_pallas_gpu(x, codebook, metric="l2", block_n=None, block_k=None, interpret=False):
    """x [N, D], codebook [K, D] (float32 or bfloat16) -> (int32 indices [N], float32 squared
    distances [N]).

    Ties go to the smallest index. `block_n` (rows per program) and `block_k` (codes per
    loop step) must be powers of two >= 16 (a Triton requirement); by default they are
    sized for H100 and shrunk to the problem for small N or K. `interpret=True` runs the
    kernel through the Pallas interpreter (any backend, e.g. CPU tests).
    """
    if x.ndim != 2 or codebook.ndim != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"search_pallas_gpu: expected x [N, D] and codebook [K, D], got {x.shape} and "
            f"{codebook.shape}"
        )
    for name, block in (("block_n", block_n), ("block_k", block_k)):
        if block is not None:
            _check_block(name, block)
    n, d = x.shape
    k = codebook.shape[0]
    if n == 0:
        return jnp.zeros((0,), jnp.int32), jnp.zeros((0,), jnp.float32)
    # The Triton dot needs both operands in one dtype.
    dtype = jnp.result_type(x.dtype, codebook.dtype)
    x, codebook = x.astype(dtype), codebook.astype(dtype)

    d_pad, block_d = _feature_blocking(d)
    if block_n is None:
        block_n = min(DEFAULT_BLOCK_N, _next_pow2(max(n, 16)))
    if block_k is None:
        default_k = DEFAULT_BLOCK_K_SMALL_D if d_pad <= SMALL_D else DEFAULT_BLOCK_K
        block_k = min(default_k, _next_pow2(max(k, 16)))

    x, codebook, x_sq, c_sq = prepare(x, codebook, metric)
    n_pad, k_pad = _round_up(n, block_n), _round_up(k, block_k)
    # Zero padding: extra columns add 0 to every dot; extra rows are sliced off below.
    x = jnp.pad(x, ((0, n_pad - n), (0, d_pad - d)))
    codebook = jnp.pad(codebook, ((0, k_pad - k), (0, d_pad - d)))
    # Padded codes get an infinite norm, so their distance is +inf and they never win. A
    # zero norm would not do: a zero code is at distance ||x||^2 from x, closer than any
    # real code beyond that, and it ties the real codes of an all-zero codebook.
    c_sq = jnp.pad(c_sq, (0, k_pad - k), constant_values=jnp.inf)

    idx, partial_min = _search_padded(
        x, codebook, c_sq, block_n=block_n, block_k=block_k, block_d=block_d, interpret=interpret
    )
    return idx[:n], full_distance(partial_min[:n], x_sq)
