"""VectorQuantizer: lookup, gradients, losses, k-means init, bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.quantizers import STATS, VectorQuantizer
from mmjax.quantizers.codebook_updates import kmeans
from mmjax.quantizers.straight_through import rotation_trick
from tests.references import assert_nearest, np_normalize, np_sqdist


def _z(shape=(4, 6, 6, 8), seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


def _codebook(q, variables):
    return np.asarray(q.apply(variables, method=q.codebook))


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("update", ["ema", "grad"])
def test_indices_are_brute_force_argmin(metric, update):
    q = VectorQuantizer(codebook_size=40, dim=8, metric=metric, update=update)
    z = _z()
    v = q.init(jax.random.key(1), z)
    out = q.apply(v, z)
    assert out.indices.shape == z.shape[:-1] and out.indices.dtype == jnp.int32
    assert_nearest(out.indices, np.asarray(z).reshape(-1, 8), _codebook(q, v), metric)
    codes = _codebook(q, v)[np.asarray(out.indices)]
    if metric == "cosine":
        np.testing.assert_allclose(np.linalg.norm(codes, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out.quantized, codes, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q.apply(v, out.indices, method=q.decode_indices), codes, atol=1e-6)


def test_straight_through_gradient_is_gradient_at_codes():
    q = VectorQuantizer(codebook_size=16, dim=8)
    z = _z()
    v = q.init(jax.random.key(1), z)
    w = jax.random.normal(jax.random.key(2), z.shape)
    loss = lambda q_: jnp.sum(w * q_**2)
    grad_z = jax.grad(lambda z_: loss(q.apply(v, z_).quantized))(z)
    codes = q.apply(v, z).quantized
    np.testing.assert_allclose(grad_z, jax.grad(loss)(codes), rtol=1e-6)


def test_rotation_trick_forward_and_gradient():
    rng = np.random.default_rng(0)
    z, c, g = (rng.normal(size=(5, 6)).astype(np.float32) for _ in range(3))
    q, vjp = jax.vjp(rotation_trick, jnp.asarray(z), jnp.asarray(c))
    np.testing.assert_allclose(q, c, rtol=1e-6)
    grad_z, grad_c = vjp(jnp.asarray(g))
    np.testing.assert_array_equal(grad_c, 0.0)
    for i in range(5):
        zh, ch = np_normalize(z[i]), np_normalize(c[i])
        r = np_normalize(zh + ch)
        rot = np.eye(6) - 2 * np.outer(r, r) + 2 * np.outer(ch, zh)
        scale = np.linalg.norm(c[i]) / np.linalg.norm(z[i])
        np.testing.assert_allclose(scale * rot @ z[i], c[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad_z[i], scale * rot.T @ g[i], rtol=1e-4, atol=1e-5)


def test_losses_and_codebook_gradient_match_numpy():
    q = VectorQuantizer(codebook_size=12, dim=5, update="grad", beta=0.3, codebook_weight=0.7)
    z = _z((50, 5))
    v = q.init(jax.random.key(1), z)
    out = q.apply(v, z)
    cb = _codebook(q, v)
    idx = np.asarray(out.indices)
    diff = np.asarray(z, np.float64) - cb[idx]
    np.testing.assert_allclose(out.loss, (0.3 + 0.7) * np.mean(diff**2), rtol=1e-5)
    grads = jax.grad(lambda p: q.apply({**v, "params": p}, z).loss)(v["params"])["codebook"]
    expected = np.zeros_like(cb, np.float64)
    np.add.at(expected, idx, -2 * 0.7 * diff / diff.size)  # d/dc of 0.7 mean((sg(z) - c)^2)
    np.testing.assert_allclose(grads, expected, rtol=1e-4, atol=1e-7)
    # The commitment term trains the encoder: d/dz = 2 beta (z - c) / size.
    grad_z = jax.grad(lambda z_: q.apply(v, z_).loss)(z)
    np.testing.assert_allclose(grad_z, 2 * 0.3 * diff / diff.size, rtol=1e-4, atol=1e-7)


def test_entropy_penalty_matches_numpy():
    q = VectorQuantizer(16, 4, entropy_weight=0.5, entropy_temperature=0.7, beta=0.0)
    z = _z((30, 4))
    v = q.init(jax.random.key(1), z)
    out = q.apply(v, z)
    logits = -np_sqdist(np.asarray(z), _codebook(q, v)) / 0.7
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    per_sample = np.mean(-np.sum(p * np.log(p), axis=1))
    pm = p.mean(0)
    batch = -np.sum(pm * np.log(pm))
    np.testing.assert_allclose(out.metrics["entropy_per_sample"], per_sample, rtol=1e-4)
    np.testing.assert_allclose(out.metrics["entropy_batch"], batch, rtol=1e-4)
    np.testing.assert_allclose(out.loss, 0.5 * (per_sample - batch), rtol=1e-4, atol=1e-6)


def test_factorized_lookup_projects_in_and_out():
    q = VectorQuantizer(codebook_size=32, dim=24, codebook_dim=4, metric="cosine")
    z = _z((3, 7, 24))
    v = q.init(jax.random.key(1), z)
    assert _codebook(q, v).shape == (32, 4)
    out = q.apply(v, z)
    p_in, p_out = v["params"]["project_in"], v["params"]["project_out"]
    ze = np_normalize(np.asarray(z).reshape(-1, 24) @ p_in["kernel"] + p_in["bias"])
    assert_nearest(out.indices, ze, _codebook(q, v), "l2")
    codes = _codebook(q, v)[np.asarray(out.indices).reshape(-1)]
    expected = codes @ p_out["kernel"] + p_out["bias"]
    np.testing.assert_allclose(np.asarray(out.quantized).reshape(-1, 24), expected, atol=1e-5)
    decoded = q.apply(v, out.indices, method=q.decode_indices)
    np.testing.assert_allclose(decoded, out.quantized, atol=1e-6)


def test_bfloat16_inputs_quantize_in_float32():
    q = VectorQuantizer(codebook_size=64, dim=8)
    z16 = _z().astype(jnp.bfloat16)
    v = q.init(jax.random.key(1), z16)
    out16 = q.apply(v, z16)
    out32 = q.apply(v, z16.astype(jnp.float32))
    assert out16.quantized.dtype == jnp.bfloat16 and out16.loss.dtype == jnp.float32
    np.testing.assert_array_equal(out16.indices, out32.indices)
    np.testing.assert_array_equal(out16.quantized, out32.quantized.astype(jnp.bfloat16))


def test_kmeans_decreases_distortion():
    x = jax.random.normal(jax.random.key(0), (400, 6)) * jnp.array([3, 2, 1, 1, 0.5, 0.1])
    centroids, distortion = kmeans(x, 16, jax.random.key(1), iters=8)
    d = np.asarray(distortion)
    assert np.all(np.diff(d) <= 1e-5 * d[0]), d  # Lloyd's iterations never increase it
    assert d[-1] < 0.7 * d[0]
    ref = np_sqdist(np.asarray(x), np.asarray(centroids)).min(1).mean()
    np.testing.assert_allclose(d[-1], ref, rtol=1e-4)


@pytest.mark.parametrize("update", ["ema", "grad"])
def test_kmeans_init_sets_codebook_from_first_batch(update):
    z = _z((16, 16, 8)) * jnp.linspace(0.1, 3.0, 8)
    plain = VectorQuantizer(32, 8, update=update)
    init = VectorQuantizer(32, 8, update=update, kmeans_init=True, kmeans_iters=10)
    key = jax.random.key(3)
    v_plain, v_init = plain.init(key, z), init.init(key, z)
    err = lambda q, v: float(jnp.mean((q.apply(v, z).quantized - z) ** 2))
    assert err(init, v_init) < 0.5 * err(plain, v_plain)
    expected, _ = kmeans(z.reshape(-1, 8), 32, jax.random.fold_in(key, 0), 10)
    # Same algorithm, same data: the init codebook is k-means' output (rng stream aside).
    ref_err = np_sqdist(np.asarray(z).reshape(-1, 8), np.asarray(expected)).min(1).mean() / 8
    np.testing.assert_allclose(err(init, v_init), ref_err, rtol=0.2)


def test_eval_call_changes_no_state():
    q = VectorQuantizer(16, 8, restart_dead_codes=True)
    z = _z()
    v = q.init(jax.random.key(1), z)
    _, new = q.apply(v, z, train=False, mutable=[STATS])
    jax.tree.map(np.testing.assert_array_equal, new[STATS], v[STATS])


@pytest.mark.parametrize(
    "impl, blocks",
    [("xla_chunked", dict(search_block_k=16)), ("pallas", {}), ("pallas_gpu", {})],
)
def test_every_search_path_gives_the_same_quantizer(impl, blocks):
    # On CPU "pallas" runs the TPU kernel interpreted; "pallas_gpu" would need interpret
    # mode, which the quantizer does not expose: it must fail clearly, not silently.
    z = _z((2, 8, 8, 8))
    ref = VectorQuantizer(40, 8)
    v = ref.init(jax.random.key(1), z)
    q = VectorQuantizer(40, 8, search_impl=impl, **blocks)
    if impl == "pallas_gpu":
        with pytest.raises(Exception, match=r"(?i)gpu|triton|cuda|interpret"):
            q.apply(v, z)
        return
    out, expected = q.apply(v, z), ref.apply(v, z)
    np.testing.assert_array_equal(out.indices, expected.indices)
    np.testing.assert_allclose(out.quantized, expected.quantized)
    with pytest.raises(ValueError, match="search_impl must be one of"):
        VectorQuantizer(40, 8, search_impl="triton")
