"""Public `codebook_search` and the dispatch between its implementations."""

import jax
import jax.numpy as jnp

from mmjax.kernels.codebook_search.reference import search_reference
from mmjax.kernels.codebook_search.xla_chunked import search_chunked

METRICS = ("l2", "cosine")
IMPLS = ("auto", "xla", "xla_chunked")

# `auto` keeps the full distance matrix while it stays below this many bytes and switches
# to the chunked search above it. Measured on CPU (benchmarks/RESULTS.md): the two tie at
# about 1 MiB; at 16 MiB the tiled search is already ~10x faster, because its distance
# tiles stay in cache between the matmul and the reductions.
FULL_MATRIX_BYTES_LIMIT = 4 * 2**20


def _check(x, codebook, metric, impl, block_n, block_k):
    for name, a in (("x", x), ("codebook", codebook)):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"codebook_search: {name} must be an array, got {type(a).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"codebook_search: x must be a float array, got dtype {x.dtype}")
    if not jnp.issubdtype(codebook.dtype, jnp.floating):
        raise TypeError(
            f"codebook_search: codebook must be a float array, got dtype {codebook.dtype}"
        )
    if x.ndim < 1:
        raise ValueError("codebook_search: x must have a trailing feature axis [..., D]")
    if codebook.ndim != 2 or codebook.shape[0] < 1:
        raise ValueError(
            f"codebook_search: codebook must have shape [K, D] with K >= 1, got {codebook.shape}"
        )
    if x.shape[-1] != codebook.shape[1]:
        raise ValueError(
            f"codebook_search: x's last dimension ({x.shape[-1]}) must equal the codebook's "
            f"dimension D={codebook.shape[1]}"
        )
    if metric not in METRICS:
        raise ValueError(f"codebook_search: metric must be one of {METRICS}, got {metric!r}")
    if impl not in IMPLS:
        raise ValueError(f"codebook_search: impl must be one of {IMPLS}, got {impl!r}")
    for name, block in (("block_n", block_n), ("block_k", block_k)):
        if block is not None and (not isinstance(block, int) or block < 1):
            raise ValueError(f"codebook_search: {name} must be a positive int, got {block!r}")


def choose_impl(n: int, k: int) -> str:
    """The implementation `auto` picks for N rows and K codes."""
    return "xla" if n * k * 4 <= FULL_MATRIX_BYTES_LIMIT else "xla_chunked"


def codebook_search(
    x,
    codebook,
    *,
    metric: str = "l2",
    impl: str = "auto",
    return_distance: bool = False,
    interpret: bool = False,
    block_n: int | None = None,
    block_k: int | None = None,
):
    """Index of the nearest code for every vector of `x`.

    Args:
      x: [..., D] float array (float32 or bfloat16).
      codebook: [K, D] float array.
      metric: "l2" (squared Euclidean) or "cosine" (squared Euclidean between
        l2-normalized vectors, i.e. 2 - 2 cos).
      impl: "auto", "xla" (full distance matrix), "xla_chunked" (running min over
        codebook chunks; memory ~ block_n x block_k).
      return_distance: also return the float32 squared distance to the chosen code.
      interpret: run Pallas kernels in interpret mode (kernels that are not Pallas
        ignore it).
      block_n, block_k: row and code block sizes of the blocked paths.

    Returns:
      int32 indices of shape x.shape[:-1]; ties go to the smallest index. With
      `return_distance`, a tuple (indices, distances).
    """
    del interpret  # no Pallas path is dispatched to yet; accepted for a stable signature
    _check(x, codebook, metric, impl, block_n, block_k)
    batch_shape = x.shape[:-1]
    flat = jax.lax.stop_gradient(x.reshape(-1, x.shape[-1]))
    codebook = jax.lax.stop_gradient(codebook)
    if impl == "auto":
        impl = choose_impl(flat.shape[0], codebook.shape[0])
    if impl == "xla":
        idx, dist = search_reference(flat, codebook, metric)
    else:
        idx, dist = search_chunked(flat, codebook, metric, block_n=block_n, block_k=block_k)
    idx = idx.reshape(batch_shape)
    if return_distance:
        return idx, dist.reshape(batch_shape)
    return idx
