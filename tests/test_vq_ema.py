"""EMA codebook updates and dead-code restarts against a numpy re-implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.quantizers import STATS, VectorQuantizer
from tests.references import np_nearest


def np_ema_step(cluster_size, embed_sum, x, idx, decay, eps):
    k = cluster_size.shape[0]
    counts = np.bincount(idx, minlength=k).astype(np.float64)
    sums = np.zeros_like(embed_sum)
    np.add.at(sums, idx, x)
    cluster_size = decay * cluster_size + (1 - decay) * counts
    embed_sum = decay * embed_sum + (1 - decay) * sums
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) / (n + k * eps) * n
    return cluster_size, embed_sum, embed_sum / smoothed[:, None]


def test_ema_update_matches_numpy_over_steps():
    q = VectorQuantizer(codebook_size=10, dim=3, ema_decay=0.9, ema_epsilon=1e-3)
    keys = jax.random.split(jax.random.key(0), 4)
    v = q.init(jax.random.key(1), jnp.zeros((1, 3)))
    stats = jax.tree.map(lambda a: np.asarray(a, np.float64), v[STATS])
    cs, es, cb = stats["cluster_size"], stats["embed_sum"], stats["codebook"]
    for key in keys:
        x = np.asarray(jax.random.normal(key, (64, 3)) + 0.5)
        out, new = q.apply(v, jnp.asarray(x, jnp.float32), train=True, mutable=[STATS])
        idx, _, _ = np_nearest(x, cb)
        np.testing.assert_array_equal(out.indices, idx)
        cs, es, cb = np_ema_step(cs, es, x, idx, 0.9, 1e-3)
        np.testing.assert_allclose(new[STATS]["cluster_size"], cs, rtol=1e-5)
        np.testing.assert_allclose(new[STATS]["embed_sum"], es, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new[STATS]["codebook"], cb, rtol=1e-4, atol=1e-6)
        v = {**v, **new}
    assert "codebook" not in v.get("params", {})  # EMA codebooks are never parameters


@pytest.mark.parametrize("update", ["ema", "grad"])
def test_dead_codes_are_restarted_from_batch_vectors(update):
    k, d, decay = 32, 4, 0.1
    # Low decay: after one step every code unused by the batch falls below the threshold.
    q = VectorQuantizer(
        k, d, update=update, restart_dead_codes=True, dead_threshold=0.5, ema_decay=decay
    )
    # Data in a small region: most random codes are far away and never chosen.
    x = jax.random.normal(jax.random.key(0), (128, d)) * 0.1 + 3.0
    xs = np.asarray(x, np.float64)
    v = q.init(jax.random.key(1), x)
    before = np.asarray(q.apply(v, method=q.codebook), np.float64)
    out, new = q.apply(v, x, train=True, rngs={"quantizer": jax.random.key(2)}, mutable=[STATS])
    restarted = {**v, **new}
    after = np.asarray(q.apply(restarted, method=q.codebook))
    counts = np.bincount(np.asarray(out.indices), minlength=k)
    dead = decay * 1.0 + (1 - decay) * counts < 0.5  # cluster sizes start at 1
    assert 0 < dead.sum() < k
    for code in after[dead]:  # each restarted code is one of the batch vectors
        assert np.min(np.abs(xs - code).max(axis=1)) < 1e-6
    if update == "ema":
        _, _, cb = np_ema_step(np.ones(k), before, xs, np.asarray(out.indices), decay, 1e-5)
        np.testing.assert_allclose(after[~dead], cb[~dead], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(new[STATS]["cluster_size"][dead], 1.0)
    else:
        np.testing.assert_array_equal(after[~dead], before[~dead])
        # A restarted code is param + offset: the codebook loss still trains the parameter.
        grads = jax.grad(lambda p: q.apply({**restarted, "params": p}, x).loss)(v["params"])
        idx = np.asarray(q.apply(restarted, x).indices)
        diff = xs - after[idx]
        expected = np.zeros((k, d))
        np.add.at(expected, idx, -2 * q.codebook_weight * diff / diff.size)
        np.testing.assert_allclose(grads["codebook"], expected, rtol=1e-3, atol=1e-7)
    # Restarts pull the dead codes into the data: distortion drops.
    err = lambda vv: float(jnp.mean((q.apply(vv, x).quantized - x) ** 2))
    assert err(restarted) < err(v)


def test_dead_fraction_metric_counts_codes_below_threshold():
    q = VectorQuantizer(20, 2, dead_threshold=0.95, ema_decay=0.9)
    x = jax.random.normal(jax.random.key(0), (50, 2))
    v = q.init(jax.random.key(1), x)
    out, new = q.apply(v, x, train=True, mutable=[STATS])
    cs = np.asarray(new[STATS]["cluster_size"])
    np.testing.assert_allclose(out.metrics["dead_fraction"], np.mean(cs < 0.95))
    assert 0 < float(out.metrics["dead_fraction"]) < 1


def test_restart_without_rng_is_a_clear_error():
    q = VectorQuantizer(8, 2, restart_dead_codes=True)
    x = jnp.ones((4, 2))
    v = q.init(jax.random.key(1), x)
    with pytest.raises(ValueError, match=r"rngs=.*quantizer"):
        q.apply(v, x, train=True, mutable=[STATS])
