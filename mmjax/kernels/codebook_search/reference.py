"""Pure-jnp nearest-code search over the full N x K distance matrix (the `xla` path).

This is both the reference every other path is tested against and the fallback on
backends without a kernel. All paths share `prepare` and `partial_distances`, so that
they compute every distance with the same formula and agree on ties bit for bit.
"""

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Unit-norm rows; an all-zero row stays zero (no NaN)."""
    sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    return (x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps)).astype(x.dtype)).astype(x.dtype)


def prepare(x: jax.Array, codebook: jax.Array, metric: str):
    """Normalizes for cosine and computes squared norms in float32.

    Returns (x, codebook, x_sqnorm [N], code_sqnorm [K]). Inputs keep their dtype
    (bfloat16 stays bfloat16 for the matrix unit); norms are float32.
    """
    if metric == "cosine":
        x = l2_normalize(x)
        codebook = l2_normalize(codebook)
    x_sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1)
    c_sq = jnp.sum(jnp.square(codebook.astype(jnp.float32)), axis=-1)
    return x, codebook, x_sq, c_sq


def partial_distances(x: jax.Array, codebook: jax.Array, code_sqnorm: jax.Array) -> jax.Array:
    """||c||^2 - 2 x.c, float32 [N, K]: the squared L2 distance minus the per-row ||x||^2.

    The per-row constant does not change the argmin, so searches add it back only for
    the minimum. float32 inputs use HIGHEST precision (on TPU the default would round
    to bfloat16 and break exact ties); bfloat16 inputs multiply exactly into float32.
    """
    precision = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
    dots = jax.lax.dot_general(
        x,
        codebook,
        (((1,), (1,)), ((), ())),
        precision=precision,
        preferred_element_type=jnp.float32,
    )
    return code_sqnorm[None, :] - 2.0 * dots


def full_distance(partial_min: jax.Array, x_sqnorm: jax.Array) -> jax.Array:
    """Adds back ||x||^2; rounding can make an exact match slightly negative."""
    return jnp.maximum(partial_min + x_sqnorm, 0.0)


def first_min(d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Row minimum of d [N, K] and the smallest index attaining it (ties -> smallest).

    Two plain reductions instead of a variadic argmin: the formulation the blocked paths
    use on their (cache-sized) tiles.
    """
    dmin = jnp.min(d, axis=-1)
    iota = jax.lax.broadcasted_iota(jnp.int32, d.shape, d.ndim - 1)
    idx = jnp.min(jnp.where(d == dmin[:, None], iota, d.shape[-1]), axis=-1)
    return idx, dmin


def search_reference(x: jax.Array, codebook: jax.Array, metric: str):
    """[N, D], [K, D] -> (int32 indices [N], float32 squared distances [N])."""
    x, codebook, x_sq, c_sq = prepare(x, codebook, metric)
    d = partial_distances(x, codebook, c_sq)
    # jnp.argmin returns the first occurrence (ties -> smallest index) and, unlike
    # `first_min`, needs no second N x K temporary: this path is the memory baseline.
    idx = jnp.argmin(d, axis=-1).astype(jnp.int32)
    dmin = jnp.take_along_axis(d, idx[:, None], axis=-1)[:, 0]
    return idx, full_distance(dmin, x_sq)
