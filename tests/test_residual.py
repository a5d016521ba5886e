"""Residual and multi-scale residual quantizers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.quantizers import (
    FSQ,
    STATS,
    MultiScaleResidualQuantizer,
    ResidualQuantizer,
    VectorQuantizer,
)
from tests.references import np_nearest


def _z(shape=(8, 8, 8, 6), seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("shared", [False, True])
def test_error_never_increases_with_depth(shared):
    # k-means-initialized levels: each level's codes are cluster means of the residual it
    # sees, so quantizing can only shrink the residual (the mean beats the zero vector).
    base = VectorQuantizer(16, 6, kmeans_init=True, kmeans_iters=8)
    depth = 5
    q = ResidualQuantizer(base, depth=depth, shared_codebook=shared)
    z = _z()
    v = q.init(jax.random.key(1), z)
    out = q.apply(v, z)
    errors = [float(jnp.mean(jnp.sum((z) ** 2, -1)))]
    for d in range(1, depth + 1):
        recon = q.apply(v, out.indices[..., :d], method=q.decode_indices)
        errors.append(float(jnp.mean(jnp.sum((z - recon) ** 2, -1))))
    assert all(b <= a + 1e-4 for a, b in itertools.pairwise(errors)), errors
    if not shared:
        assert errors[-1] < 0.5 * errors[1], errors
    n_codebooks = 1 if shared else depth
    assert len(v[STATS]) == n_codebooks


def test_levels_quantize_the_residual_and_decode_reproduces():
    q = ResidualQuantizer(VectorQuantizer(12, 6), depth=3)
    z = _z((40, 6))
    v = q.init(jax.random.key(1), z)
    out = q.apply(v, z)
    assert out.indices.shape == (40, 3)
    residual = np.asarray(z, np.float64)
    total = np.zeros_like(residual)
    for i in range(3):
        cb = np.asarray(v[STATS][f"levels_{i}"]["codebook"])
        idx, _, _ = np_nearest(residual, cb)
        np.testing.assert_array_equal(out.indices[:, i], idx)
        residual = residual - cb[idx]
        total += cb[idx]
    np.testing.assert_allclose(out.quantized, total, atol=1e-5)
    np.testing.assert_allclose(
        q.apply(v, out.indices, method=q.decode_indices), out.quantized, atol=1e-5
    )
    # Straight-through over the sum: d quantized / d z is the identity.
    w = jax.random.normal(jax.random.key(2), z.shape)
    g = jax.grad(lambda z_: jnp.sum(w * q.apply(v, z_).quantized))(z)
    np.testing.assert_allclose(g, w, rtol=1e-6)


def test_residual_over_fsq():
    q = ResidualQuantizer(FSQ((5, 5, 5)), depth=2)
    z = _z((30, 3))
    v = q.init(jax.random.key(1), z)
    out = q.apply(v, z)
    first = FSQ((5, 5, 5)).apply({}, z)
    np.testing.assert_array_equal(out.indices[:, 0], first.indices)
    second = FSQ((5, 5, 5)).apply({}, z - first.quantized)
    np.testing.assert_array_equal(out.indices[:, 1], second.indices)


def test_quantize_dropout_keeps_a_prefix():
    q = ResidualQuantizer(VectorQuantizer(8, 6), depth=4, dropout_prob=1.0, dropout_min_depth=1)
    z = _z((20, 6))
    v = q.init(jax.random.key(1), z)
    prefixes = [
        q.apply(v, q.apply(v, z).indices[..., :d], method=q.decode_indices) for d in range(1, 5)
    ]
    seen = set()
    for seed in range(12):
        out, _ = q.apply(
            v, z, train=True, rngs={"quantizer": jax.random.key(seed)}, mutable=[STATS]
        )
        match = [d + 1 for d, p in enumerate(prefixes) if np.allclose(out.quantized, p, atol=1e-5)]
        assert match, "quantized must equal the decoding of some prefix of the levels"
        seen.add(match[0])
    assert len(seen) >= 3  # the kept depth varies with the key
    with pytest.raises(ValueError, match=r"rngs=.*quantizer"):
        q.apply(v, z, train=True, mutable=[STATS])


def np_multiscale(z, codebook, scales):
    """Numpy VAR-style multi-scale residual quantization with area-down / nearest-up."""
    b, side, _, d = z.shape
    residual, total, tokens = z.astype(np.float64), np.zeros(z.shape), []
    for s in scales:
        f = side // s
        down = residual.reshape(b, s, f, s, f, d).mean(axis=(2, 4))
        idx, _, _ = np_nearest(down.reshape(-1, d), codebook)
        codes = codebook[idx].reshape(b, s, s, d)
        up = codes.repeat(f, axis=1).repeat(f, axis=2)
        total, residual = total + up, residual - up
        tokens.append(idx.reshape(b, s * s))
    return np.concatenate(tokens, 1), total


def test_multiscale_matches_numpy_reference():
    scales = (1, 2, 4, 8)
    q = MultiScaleResidualQuantizer(VectorQuantizer(32, 6), scales=scales, upsample="nearest")
    z = _z((3, 8, 8, 6))
    v = q.init(jax.random.key(1), z)
    out = q.apply(v, z)
    assert out.indices.shape == (3, 1 + 4 + 16 + 64) == (3, q.num_tokens)
    cb = np.asarray(v[STATS]["levels_0"]["codebook"])
    tokens, total = np_multiscale(np.asarray(z), cb, scales)
    np.testing.assert_array_equal(out.indices, tokens)
    np.testing.assert_allclose(out.quantized, total, atol=1e-5)
    np.testing.assert_allclose(q.apply(v, out.indices, method=q.decode_indices), total, atol=1e-5)


def test_multiscale_linear_upsampling_decodes_and_refines():
    base = VectorQuantizer(64, 6, kmeans_init=True)
    q = MultiScaleResidualQuantizer(base, scales=(1, 2, 3, 4, 6, 8), shared_codebook=False)
    z = _z((4, 8, 8, 6))
    v = jax.jit(q.init)(jax.random.key(1), z)  # six k-means inits: one compile, not op by op
    out = jax.jit(q.apply)(v, z)
    decode = jax.jit(lambda v, i: q.apply(v, i, method=q.decode_indices))
    np.testing.assert_allclose(decode(v, out.indices), out.quantized, atol=1e-5)
    err = float(jnp.mean((out.quantized - z) ** 2))
    assert err < 0.5 * float(jnp.mean(z**2))


def test_multiscale_rejects_wrong_map_size():
    q = MultiScaleResidualQuantizer(VectorQuantizer(8, 6), scales=(1, 2, 4))
    with pytest.raises(ValueError, match=r"\[B, 4, 4, D\]"):
        q.init(jax.random.key(0), jnp.zeros((2, 8, 8, 6)))
