"""Codebook usage statistics: usage fraction, perplexity, entropies.

All reductions run over the whole (global) array, so under a sharded `jit` they are the
statistics of the global batch, identical on every device.
"""

import jax
import jax.numpy as jnp

# Up to this many codes the usage statistics come from a histogram (a sum of per-device
# partial histograms under sharding: an all-reduce of K counts); above it, from sorting
# the indices (memory O(N) for 2^18+ implicit codebooks, but a sort gathers the indices).
HISTOGRAM_MAX_CODES = 2**20


def code_usage_metrics(indices: jax.Array, codebook_size: int) -> dict:
    """`usage`: fraction of the K codes hit by the batch; `perplexity`: exp(entropy)
    of the batch's code histogram (K when all codes are used equally, 1 when one is).
    Index -1 (a non-finite input) counts for neither."""
    flat = indices.reshape(-1)
    n = flat.shape[0]
    # An exact integer count: with every index valid, the same float32 value as n.
    n_valid = jnp.maximum(jnp.sum(flat >= 0), 1).astype(jnp.float32)
    if codebook_size <= HISTOGRAM_MAX_CODES:
        # segment_sum drops the out-of-range id -1.
        counts = jax.ops.segment_sum(jnp.ones((n,), jnp.float32), flat, codebook_size)
        used = jnp.sum(counts > 0)
    else:
        flat = jnp.sort(flat)  # the -1s, if any, form the first run
        new_run = jnp.concatenate([jnp.ones((1,), bool), flat[1:] != flat[:-1]])
        run_id = jnp.cumsum(new_run) - 1
        ones = (flat >= 0).astype(jnp.float32)
        counts = jax.ops.segment_sum(ones, run_id, num_segments=n)
        used = jnp.sum(new_run & (flat >= 0))
    return {
        "usage": used.astype(jnp.float32) / codebook_size,
        "perplexity": jnp.exp(entropy(counts / n_valid)),
    }


def entropy(probs: jax.Array, axis: int = -1) -> jax.Array:
    """Shannon entropy in nats along `axis`, with 0 log 0 = 0."""
    safe = jnp.where(probs > 0, probs, 1.0)
    return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(safe), 0.0), axis=axis)


def binary_entropy(p: jax.Array) -> jax.Array:
    """Entropy (nats) of Bernoulli(p), elementwise."""
    return entropy(jnp.stack([p, 1.0 - p], axis=-1))


def entropy_penalty(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean per-sample entropy, entropy of the mean distribution) for logits [N, K].

    Minimizing the first makes each assignment confident; maximizing the second spreads
    the batch over the codebook (MAGVIT-v2's entropy loss is their weighted difference).
    """
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.mean(entropy(probs)), entropy(jnp.mean(probs, axis=0))
