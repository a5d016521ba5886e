"""codebook_search against a brute-force numpy argmin, on every XLA path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.kernels import codebook_search
from mmjax.kernels.codebook_search.api import FULL_MATRIX_BYTES_LIMIT, choose_impl
from tests.references import assert_nearest, np_nearest

PATHS = [
    dict(impl="xla"),
    dict(impl="xla_chunked", block_k=16),
    dict(impl="xla_chunked", block_k=7, block_n=5),
    dict(impl="xla_chunked"),
    dict(impl="auto"),
    # The Pallas kernels in interpret mode: small blocks so that ties and padding cross
    # block boundaries, and the default blocks.
    dict(impl="pallas_tpu", interpret=True, block_n=128, block_k=16),
    dict(impl="pallas_tpu", interpret=True),
    dict(impl="pallas_gpu", interpret=True, block_n=16, block_k=16),
    dict(impl="pallas_gpu", interpret=True),
]
KERNELS = [
    dict(impl="xla"),
    dict(impl="xla_chunked", block_k=32),
    dict(impl="pallas_tpu", interpret=True, block_k=32),
    dict(impl="pallas_gpu", interpret=True, block_k=32),
]
SHAPES = [(1, 1, 1), (7, 5, 3), (33, 1, 4), (100, 37, 13), (257, 300, 16), (64, 1000, 1)]


def _data(n, k, d, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(k, d)).astype(np.float32)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("path", PATHS, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_matches_brute_force(path, shape, metric):
    x, c = _data(*shape)
    idx, dist = codebook_search(x, c, metric=metric, return_distance=True, **path)
    assert idx.dtype == jnp.int32 and idx.shape == (shape[0],)
    assert_nearest(idx, x, c, metric)
    _, ref_min, _ = np_nearest(x, c, metric)
    np.testing.assert_allclose(dist, ref_min, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_integer_ties_go_to_smallest_index(path):
    rng = np.random.default_rng(1)
    base = rng.integers(-2, 3, size=(20, 6)).astype(np.float32)
    # Every code appears three times (at i, i + 20, i + 40): each exact tie must resolve to
    # the first copy, including across chunk boundaries.
    codebook = np.concatenate([base, base, base])
    x = np.concatenate([base, rng.integers(-2, 3, size=(50, 6)).astype(np.float32)])
    idx = np.asarray(codebook_search(x, codebook, **path))
    ref_idx, _, _ = np_nearest(x, codebook)
    np.testing.assert_array_equal(idx, ref_idx)
    assert np.all(idx < 20)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_all_zero_inputs_never_pick_padding(path):
    # With all-zero codes every distance ties at 0; unmasked zero padding would tie too.
    x = np.zeros((9, 3), np.float32)
    for codebook in (np.zeros((13, 3), np.float32), _data(1, 13, 3)[1]):
        idx, dist = codebook_search(x, codebook, return_distance=True, **path)
        ref_idx, ref_min, _ = np_nearest(x, codebook)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(dist, ref_min, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p["impl"])
def test_bfloat16_inputs(path):
    x, c = _data(200, 130, 24, seed=3)
    xb, cb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(c, jnp.bfloat16)
    idx = codebook_search(xb, cb, **path)
    # The reference sees exactly the bfloat16 values.
    assert_nearest(idx, np.asarray(xb, np.float32), np.asarray(cb, np.float32))


def test_chunked_equals_unchunked():
    x, c = _data(500, 1000, 32, seed=4)
    full = codebook_search(x, c, impl="xla")
    for block_k, block_n in [(64, None), (1000, 128), (333, 77)]:
        chunked = codebook_search(x, c, impl="xla_chunked", block_k=block_k, block_n=block_n)
        np.testing.assert_array_equal(chunked, full)


def test_leading_axes_and_vmap():
    x, c = _data(4 * 5 * 6, 50, 8, seed=5)
    x4 = x.reshape(4, 5, 6, 8)
    idx = codebook_search(x4, c)
    assert idx.shape == (4, 5, 6)
    ref_idx, _, _ = np_nearest(x, c)
    np.testing.assert_array_equal(np.asarray(idx).reshape(-1), ref_idx)
    for path in KERNELS:
        vm = jax.vmap(lambda a, path=path: codebook_search(a, c, **path))(x4)
        np.testing.assert_array_equal(vm, idx)


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p["impl"])
def test_sharded_inputs_in_jit(mesh, path):
    x, c = _data(8 * 32, 77, 16, seed=6)
    xs = jax.device_put(x.reshape(8, 32, 16), NamedSharding(mesh, P(("data", "fsdp"))))
    cs = jax.device_put(c, NamedSharding(mesh, P()))
    with jax.set_mesh(mesh):
        fn = jax.jit(lambda a, b: codebook_search(a, b, **path))
        idx = fn(xs, cs)
        hlo = fn.lower(xs, cs).compile().as_text()
    # Each device searches its own tokens: nothing is gathered.
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    assert idx.sharding.spec[0] == ("data", "fsdp") or len(idx.sharding.device_set) == 8
    np.testing.assert_array_equal(idx.reshape(-1), codebook_search(x, c, impl="xla"))


def test_no_gradient_leaks():
    x, c = _data(10, 7, 3)
    g = jax.grad(lambda a: codebook_search(a, c, return_distance=True)[1].sum())(jnp.asarray(x))
    np.testing.assert_array_equal(g, 0.0)


def test_auto_switches_to_chunked_for_large_matrices():
    assert choose_impl(1024, 1024) == "xla"
    n = FULL_MATRIX_BYTES_LIMIT // (4 * 1024) + 1
    assert choose_impl(n, 1024) == "xla_chunked"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=np.zeros((3, 4), np.float32), codebook=np.zeros((5, 3), np.float32)), "last dim"),
        (dict(x=np.zeros((3, 4), np.int32), codebook=np.zeros((5, 4), np.float32)), "float"),
        (dict(x=np.zeros((3, 4), np.float32), codebook=np.zeros((0, 4), np.float32)), "K >= 1"),
        (dict(x=np.zeros((3, 4), np.float32), codebook=np.zeros((5, 4)), metric="dot"), "metric"),
        (dict(x=np.zeros((3, 4), np.float32), codebook=np.zeros((5, 4)), impl="cuda"), "impl"),
        (dict(x=np.zeros((3, 4), np.float32), codebook=np.zeros((5, 4)), block_k=0), "block_k"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        codebook_search(kwargs.pop("x"), kwargs.pop("codebook"), **kwargs)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_non_finite_rows_get_index_minus_one(path):
    x, c = _data(40, 23, 5, seed=8)
    x[0] = c[0]  # an exact match of code 0: must stay 0, not be confused with a NaN row
    x[3, 2], x[7, 0], x[11, 4] = np.nan, np.inf, -np.inf
    bad = np.zeros(40, bool)
    bad[[3, 7, 11]] = True
    idx, dist = codebook_search(x, c, return_distance=True, **path)
    idx, dist = np.asarray(idx), np.asarray(dist)
    np.testing.assert_array_equal(idx[bad], -1)
    assert np.isnan(dist[bad]).all()
    assert idx[0] == 0 and dist[0] == pytest.approx(0.0, abs=1e-5)
    assert_nearest(idx[~bad], x[~bad], c)
    np.testing.assert_allclose(dist[~bad], np_nearest(x[~bad], c)[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p["impl"])
def test_non_finite_codebook_gives_minus_one_everywhere(path):
    x, c = _data(20, 70, 4, seed=9)
    c[50, 1] = np.nan  # one bad code, in a later chunk of the blocked paths
    fn = jax.jit(lambda a, b: codebook_search(a, b, return_distance=True, **path))
    idx, dist = fn(x, c)
    np.testing.assert_array_equal(idx, -1)
    assert np.isnan(np.asarray(dist)).all()
