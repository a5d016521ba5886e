"""FSQ: level grid, exact index <-> code bijection, straight-through, paper tables."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.quantizers import FSQ, FSQ_LEVELS
from tests.references import np_usage


@pytest.mark.parametrize("levels", [(3,), (2, 3), (8, 5, 5, 5), (7, 5, 5, 5, 5)])
def test_every_code_round_trips(levels):
    q = FSQ(levels)
    v = q.init(jax.random.key(0), jnp.zeros((1, len(levels))))
    all_idx = jnp.arange(q.codebook_size, dtype=jnp.int32)
    codes = np.asarray(q.apply(v, all_idx, method=q.decode_indices))
    # The grid is the product of per-channel levels: {(j - L//2) / (L//2), j < L}.
    grid = [np.arange(lv) - lv // 2 for lv in levels]
    expected = {
        tuple(float(np.float32(g / (lv // 2))) for g, lv in zip(p, levels, strict=True))
        for p in itertools.product(*grid)
    }
    assert {tuple(c) for c in codes.tolist()} == expected
    assert len(expected) == math.prod(levels) == q.codebook_size
    back = q.apply(v, jnp.asarray(codes), method=q.codes_to_indices)
    np.testing.assert_array_equal(back, all_idx)
    # Feeding each code's pre-image through __call__ gives that code and its index.
    half = np.array([lv // 2 for lv in levels], np.float32)
    levels_arr = np.array(levels, np.float32)
    half_l = (levels_arr - 1) * (1 + q.eps) / 2
    offset = np.where(levels_arr % 2 == 0, 0.5, 0.0)
    pre = np.arctanh((codes * half + offset) / half_l) - np.arctanh(offset / half_l)
    out = q.apply(v, jnp.asarray(pre, jnp.float32))
    np.testing.assert_array_equal(out.indices, all_idx)
    np.testing.assert_allclose(out.quantized, codes, atol=1e-6)


def test_random_inputs_land_on_grid_and_decode():
    levels = FSQ_LEVELS[10]
    q = FSQ(levels)
    z = jax.random.normal(jax.random.key(0), (4, 16, 16, 4)) * 3
    v = q.init(jax.random.key(1), z)
    out = q.apply(v, z)
    scaled = np.asarray(out.quantized) * np.array([lv // 2 for lv in levels])
    np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-5)
    assert np.all(np.abs(np.asarray(out.quantized)) <= 1.0)
    assert float(out.loss) == 0.0
    np.testing.assert_allclose(q.apply(v, out.indices, method=q.decode_indices), out.quantized)
    usage, perplexity = np_usage(out.indices, q.codebook_size)
    np.testing.assert_allclose(out.metrics["usage"], usage, rtol=1e-6)
    np.testing.assert_allclose(out.metrics["perplexity"], perplexity, rtol=1e-4)


def test_straight_through_gradient_is_the_bound_derivative():
    q = FSQ((5, 8))
    z = jax.random.normal(jax.random.key(0), (10, 2))
    v = q.init(jax.random.key(1), z)
    g = jax.grad(lambda z_: jnp.sum(q.apply(v, z_).quantized))(z)
    bound_grad = jax.grad(lambda z_: jnp.sum(q.apply(v, z_, method=q.bound)))(z)
    np.testing.assert_allclose(g, bound_grad / jnp.array([2.0, 4.0]), rtol=1e-6)


def test_projection_when_dim_differs():
    q = FSQ((8, 5, 5, 5), dim=32)
    z = jax.random.normal(jax.random.key(0), (3, 32))
    v = q.init(jax.random.key(1), z)
    out = q.apply(v, z)
    assert out.quantized.shape == (3, 32)
    p_in = v["params"]["project_in"]
    low = np.asarray(z) @ p_in["kernel"] + p_in["bias"]
    direct = FSQ((8, 5, 5, 5))
    np.testing.assert_array_equal(out.indices, direct.apply({}, jnp.asarray(low)).indices)
    np.testing.assert_allclose(
        q.apply(v, out.indices, method=q.decode_indices), out.quantized, atol=1e-6
    )


def test_paper_level_tables_match_their_bit_budget():
    for bits, levels in FSQ_LEVELS.items():
        assert abs(math.log2(math.prod(levels)) - bits) < 0.5, (bits, levels)
