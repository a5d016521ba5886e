"""Pure codebook maths: EMA updates with Laplace smoothing, k-means, dead-code restarts.

Kept apart from the modules so each rule can be tested against a numpy re-implementation.
"""

import jax
import jax.numpy as jnp

from mmjax.kernels import codebook_search
from mmjax.kernels.codebook_search.reference import l2_normalize


def assignment_stats(x: jax.Array, indices: jax.Array, num_codes: int):
    """Per-code counts [K] and sums of assigned vectors [K, D] (float32)."""
    counts = jax.ops.segment_sum(jnp.ones_like(indices, jnp.float32), indices, num_codes)
    sums = jax.ops.segment_sum(x.astype(jnp.float32), indices, num_codes)
    return counts, sums


def ema_update(cluster_size, embed_sum, x, indices, decay: float, epsilon: float):
    """One EMA codebook step (van den Oord et al. 2017, appendix; Sonnet's VQ-EMA).

    N_k <- decay N_k + (1 - decay) n_k,   m_k <- decay m_k + (1 - decay) sum_{i->k} x_i,
    e_k = m_k / N~_k  with Laplace smoothing N~_k = (N_k + eps) / (n + K eps) * n, n = sum N.

    Returns (cluster_size [K], embed_sum [K, D], codebook [K, D]).
    """
    k = cluster_size.shape[0]
    counts, sums = assignment_stats(x, indices, k)
    cluster_size = decay * cluster_size + (1.0 - decay) * counts
    embed_sum = decay * embed_sum + (1.0 - decay) * sums
    n = jnp.sum(cluster_size)
    smoothed = (cluster_size + epsilon) / (n + k * epsilon) * n
    return cluster_size, embed_sum, embed_sum / smoothed[:, None]


def kmeans(x: jax.Array, num_codes: int, key: jax.Array, iters: int, metric: str = "l2"):
    """Lloyd's k-means on x [N, D], starting from random rows of x.

    Returns (centroids [K, D], distortion per iteration [iters + 1]: the mean squared
    distance of x to its nearest centroid before each update and after the last).
    Empty clusters keep their previous centroid. With metric="cosine" the centroids are
    re-normalized (spherical k-means).
    """
    x = x.astype(jnp.float32)
    n = x.shape[0]
    start = jax.random.choice(key, n, (num_codes,), replace=n < num_codes)
    centroids = x[start]
    if metric == "cosine":
        x, centroids = l2_normalize(x), l2_normalize(centroids)

    def step(c, _):
        idx, dist = codebook_search(x, c, metric=metric, return_distance=True)
        counts, sums = assignment_stats(x, idx, num_codes)
        new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c)
        if metric == "cosine":
            new = l2_normalize(new)
        return new, jnp.mean(dist)

    centroids, distortion = jax.lax.scan(step, centroids, None, length=iters)
    _, last = codebook_search(x, centroids, metric=metric, return_distance=True)
    return centroids, jnp.concatenate([distortion, jnp.mean(last)[None]])


def dead_code_mask(cluster_size: jax.Array, threshold: float) -> jax.Array:
    """Codes whose EMA assignment count (per batch) is below `threshold`."""
    return cluster_size < threshold


def restart_samples(x: jax.Array, num_codes: int, key: jax.Array) -> jax.Array:
    """One random batch vector per code [K, D] (replacement candidates for dead codes)."""
    return x[jax.random.randint(key, (num_codes,), 0, x.shape[0])].astype(jnp.float32)
