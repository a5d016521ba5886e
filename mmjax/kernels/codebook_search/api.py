"""Public `codebook_search` and the dispatch between its implementations."""

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mmjax.kernels.codebook_search.pallas_gpu import search_pallas_gpu
from mmjax.kernels.codebook_search.pallas_tpu import search_pallas_tpu
from mmjax.kernels.codebook_search.reference import search_reference
from mmjax.kernels.codebook_search.xla_chunked import search_chunked
from mmjax.parallel.mesh import DATA_AXES

METRICS = ("l2", "cosine")
IMPLS = ("auto", "pallas", "pallas_tpu", "pallas_gpu", "xla", "xla_chunked")

# On CPU, `auto` keeps the full distance matrix while it stays below this many bytes and
# switches to the chunked search above it. Measured (benchmarks/RESULTS.md): the two tie at
# about 1 MiB; at 16 MiB the tiled search is already ~10x faster, because its distance
# tiles stay in cache between the matmul and the reductions.
FULL_MATRIX_BYTES_LIMIT = 4 * 2**20
# On TPU and GPU, `auto` uses the Pallas kernel from this many distances (N x K) up; below
# it the whole problem is one small matmul that XLA fuses well and a kernel launch with
# padding is not worth it. Not yet measured on hardware (see benchmarks/RESULTS.md).
KERNEL_MIN_ELEMENTS = 2**20


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


def choose_impl(n: int, k: int, platform: str = "cpu") -> str:
    """The implementation `auto` picks for N rows and K codes on `platform`."""
    if platform in ("tpu", "cuda", "gpu"):
        return "xla" if n * k < KERNEL_MIN_ELEMENTS else "pallas"
    return "xla" if n * k * 4 <= FULL_MATRIX_BYTES_LIMIT else "xla_chunked"


def _per_device(fn, x, codebook):
    """Runs `fn(x, codebook) -> (idx [N], dist [N])` once per device under the ambient mesh
    (`jax.set_mesh`): rows split over the mesh's data axes, codebook replicated.

    Pallas kernels are opaque to XLA's partitioner, which would otherwise gather the tokens
    onto every device; under shard_map each device searches its own rows.
    """
    mesh = jax.sharding.get_abstract_mesh()
    axes = () if mesh.empty else tuple(a for a in DATA_AXES if mesh.shape.get(a, 1) > 1)
    shards = math.prod(mesh.shape[a] for a in axes) if axes else 1
    if shards == 1 or x.shape[0] % shards:
        return fn(x, codebook)
    rows = P(axes)
    return jax.shard_map(
        fn, mesh=mesh, in_specs=(P(axes, None), P()), out_specs=(rows, rows), check_vma=False
    )(x, codebook)


def _search(x, codebook, impl, metric, interpret, block_n, block_k):
    """Dispatch for a flat problem: x [N, D] -> (idx [N], dist [N])."""
    n, k = x.shape[0], codebook.shape[0]
    blocks = dict(block_n=block_n, block_k=block_k)
    tpu = functools.partial(search_pallas_tpu, metric=metric, interpret=interpret, **blocks)
    gpu = functools.partial(search_pallas_gpu, metric=metric, interpret=interpret, **blocks)
    chunked = functools.partial(search_chunked, metric=metric, **blocks)
    if impl == "xla":
        return search_reference(x, codebook, metric)
    if impl == "xla_chunked":
        return _per_device(chunked, x, codebook)
    if impl == "pallas_tpu":
        return _per_device(tpu, x, codebook)
    if impl == "pallas_gpu":
        return _per_device(gpu, x, codebook)
    if impl == "pallas" and interpret:
        return _per_device(tpu, x, codebook)  # TPU semantics, on any backend

    # auto / pallas: the branch is chosen when the computation is lowered for a platform
    # (so the backend is that of the input's devices, and AOT compiles for TPU from a CPU
    # host pick the TPU kernel). Every branch is traced, so none may raise.
    def on_cpu(a, b):
        if impl == "pallas":  # no compiled kernel for CPU: the TPU kernel, interpreted
            return _per_device(functools.partial(tpu, interpret=True), a, b)
        if choose_impl(n, k, "cpu") == "xla":
            return search_reference(a, b, metric)
        return _per_device(chunked, a, b)

    def on_accelerator(kernel):
        def run(a, b):
            if impl == "auto" and choose_impl(n, k, "tpu") == "xla":
                return search_reference(a, b, metric)
            return _per_device(kernel, a, b)

        return run

    return jax.lax.platform_dependent(
        x, codebook, tpu=on_accelerator(tpu), cuda=on_accelerator(gpu), default=on_cpu
    )


def codebook_search(
    x,
    codebook,
    *,
    metric: str = "l2",
    impl: str = "auto",
    return_distance: bool = False,
    interpret=False,
    block_n: int | None = None,
    block_k: int | None = None,
):
    """Index of the nearest code for every vector of `x`.

    Args:
      x: [..., D] float array (float32 or bfloat16).
      codebook: [K, D] float array.
      metric: "l2" (squared Euclidean) or "cosine" (squared Euclidean between
        l2-normalized vectors, i.e. 2 - 2 cos).
      impl: "auto": on TPU/GPU the Pallas kernel for large problems, else XLA; on CPU
          the full matrix for small problems, else chunked.
        "pallas": the kernel of the backend (CPU has none: the TPU kernel, interpreted).
        "pallas_tpu" / "pallas_gpu": that kernel (e.g. interpreted, for tests).
        "xla": the full N x K distance matrix. "xla_chunked": running min over tiles.
      return_distance: also return the float32 squared distance to the chosen code.
      interpret: run Pallas kernels in interpret mode (True, or a
        `pltpu.InterpretParams()` for the TPU simulator); ignored by XLA paths.
      block_n, block_k: row and code block sizes of the blocked paths.

    Returns:
      int32 indices of shape x.shape[:-1]; ties go to the smallest index. With
      `return_distance`, a tuple (indices, distances).

    Non-finite inputs, the same on every backend: a row of `x` with a NaN or inf entry
    gets index -1 and distance NaN (no code is nearest to it; -1 is never a real match
    of code 0). A codebook with a non-finite entry gives -1 and NaN for every row.

    Under `jax.set_mesh(mesh)`, the blocked paths run per device (shard_map) with rows
    split over the mesh's 'data' and 'fsdp' axes and the codebook replicated.
    """
    _check(x, codebook, metric, impl, block_n, block_k)
    batch_shape = x.shape[:-1]
    flat = jax.lax.stop_gradient(x.reshape(-1, x.shape[-1]))
    codebook = jax.lax.stop_gradient(codebook)
    idx, dist = _search(flat, codebook, impl, metric, interpret, block_n, block_k)
    # One elementwise pass over the rows (fused by XLA) and one over the codebook, after
    # the search: the backends themselves disagree on NaN rows (argmin picks the NaN,
    # the running-min paths skip it).
    valid = jnp.all(jnp.isfinite(flat), axis=-1) & jnp.all(jnp.isfinite(codebook))
    idx = jnp.where(valid, idx, -1).reshape(batch_shape)
    dist = jnp.where(valid, dist, jnp.nan)
    if return_distance:
        return idx, dist.reshape(batch_shape)
    return idx
