"""LFQ and BSQ: binary codes, index bijection, entropy loss against brute force."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.quantizers import LFQ


def brute_force_entropies(x, scale, temperature):
    """Enumerates all 2^d codes explicitly: p(c|x) = softmax(-|x - c|^2 / T)."""
    d = x.shape[1]
    codes = np.array(list(itertools.product([-scale, scale], repeat=d)), np.float64)
    dist = ((x[:, None, :].astype(np.float64) - codes[None]) ** 2).sum(-1)
    logits = -dist / temperature
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    h = lambda q: -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0), axis=-1)
    return h(p).mean(), h(p.mean(0))


@pytest.mark.parametrize("spherical", [False, True])
def test_codes_are_signs_and_indices_round_trip(spherical):
    d = 6
    q = LFQ(d, spherical=spherical)
    z = jax.random.normal(jax.random.key(0), (5, 7, d))
    out = q.apply({}, z)
    s = d**-0.5 if spherical else 1.0
    zs = np.asarray(z)
    np.testing.assert_array_equal(out.quantized, np.where(zs > 0, s, -s).astype(np.float32))
    bits = (zs > 0).astype(np.int64)
    np.testing.assert_array_equal(out.indices, (bits * 2 ** np.arange(d)).sum(-1))
    if spherical:
        np.testing.assert_allclose(np.linalg.norm(out.quantized, axis=-1), 1.0, rtol=1e-6)
    all_idx = jnp.arange(2**d, dtype=jnp.int32)
    codes = q.apply({}, all_idx, method=q.decode_indices)
    assert len({tuple(c) for c in np.asarray(codes).tolist()}) == 2**d
    np.testing.assert_array_equal(q.apply({}, codes).indices, all_idx)


@pytest.mark.parametrize("spherical", [False, True])
def test_exact_entropy_loss_equals_brute_force(spherical):
    d, t = 5, 0.3
    q = LFQ(
        d,
        spherical=spherical,
        entropy_temperature=t,
        entropy_weight=0.2,
        diversity_gamma=0.7,
        commitment_weight=0.4,
    )
    z = jax.random.normal(jax.random.key(1), (40, d)) * 0.5
    out = q.apply({}, z)
    x = np.asarray(z, np.float64)
    if spherical:
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    s = d**-0.5 if spherical else 1.0
    per_sample, batch = brute_force_entropies(x, s, t)
    np.testing.assert_allclose(out.metrics["entropy_per_sample"], per_sample, rtol=1e-4)
    np.testing.assert_allclose(out.metrics["entropy_batch"], batch, rtol=1e-4)
    commit = np.mean((x - np.where(x > 0, s, -s)) ** 2)
    expected = 0.4 * commit + 0.2 * (per_sample - 0.7 * batch)
    np.testing.assert_allclose(out.loss, expected, rtol=1e-4, atol=1e-6)


def test_factorized_entropy_exact_per_sample_and_upper_bounds_batch():
    d, t = 6, 0.5
    z = jax.random.normal(jax.random.key(2), (64, d)) * 0.4
    fac = LFQ(d, entropy_temperature=t, entropy_mode="factorized").apply({}, z)
    per_sample, batch = brute_force_entropies(np.asarray(z), 1.0, t)
    np.testing.assert_allclose(fac.metrics["entropy_per_sample"], per_sample, rtol=1e-4)
    # H(joint) <= sum of the per-bit marginal entropies.
    assert float(fac.metrics["entropy_batch"]) >= batch - 1e-5
    exact = LFQ(d, entropy_temperature=t, entropy_mode="exact").apply({}, z)
    np.testing.assert_allclose(exact.metrics["entropy_batch"], batch, rtol=1e-4)


def test_entropy_gradient_spreads_codes():
    # Descending the entropy loss from a collapsed start increases codebook usage.
    d = 4
    q = LFQ(d, entropy_weight=1.0, commitment_weight=0.0, entropy_temperature=1.0)
    z = jax.random.normal(jax.random.key(3), (256, d)) * 0.05 + 0.3
    grad = jax.jit(jax.grad(lambda z_: q.apply({}, z_).loss))
    start = float(q.apply({}, z).metrics["usage"])
    for _ in range(200):
        z = z - 2.0 * grad(z)
    assert float(q.apply({}, z).metrics["usage"]) > start + 0.5


def test_straight_through_gradient():
    q = LFQ(4, entropy_weight=0.0, commitment_weight=0.0)
    z = jax.random.normal(jax.random.key(4), (8, 4))
    w = jax.random.normal(jax.random.key(5), (8, 4))
    g = jax.grad(lambda z_: jnp.sum(w * q.apply({}, z_).quantized))(z)
    np.testing.assert_allclose(g, w)
