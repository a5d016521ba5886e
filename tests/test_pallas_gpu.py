"""What is particular to the Pallas Triton codebook search: ties across tiles, the chunked-D
path, dot precision, block checks, and its CUDA lowering (export to a Triton custom call)
on a GPU-less host. The shared behaviour (shapes, ties, padding, dtypes, vmap, sharding)
is tested for every path, this one included, in test_codebook_search.py."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from mmjax.kernels.codebook_search.pallas_gpu import search_pallas_gpu
from mmjax.kernels.codebook_search.xla_chunked import search_chunked


def _data(n, k, d, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(k, d)).astype(np.float32)


def _search(x, codebook, metric="l2", **blocks):
    return search_pallas_gpu(x, codebook, metric=metric, interpret=True, **blocks)


def test_tie_with_later_tile_keeps_first_tile():
    # Code 3 (tile 0) and code 17 (tile 1) are identical and both nearest; every other code
    # is farther. The later tile must not take over on equality.
    codebook = np.full((32, 4), 5.0, np.float32)
    codebook[3] = codebook[17] = [1.0, 0.0, 0.0, 0.0]
    x = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    idx, dist = _search(x, codebook, block_n=16, block_k=16)
    np.testing.assert_array_equal(idx, [3, 3])
    np.testing.assert_array_equal(dist, [0.0, 1.0])


def test_zero_codebook_with_nonzero_inputs():
    # Every real code is at distance ||x||^2; a zero-norm padding code would be too, so only
    # the +inf padding norm keeps index 0 the answer.
    x, _ = _data(20, 1, 5, seed=2)
    idx, dist = _search(x, np.zeros((5, 5), np.float32), block_n=16, block_k=16)
    np.testing.assert_array_equal(idx, np.zeros(20))
    np.testing.assert_allclose(dist, np.sum(x.astype(np.float64) ** 2, axis=1), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(300, 500, 32), (64, 200, 200)], ids=["d32", "d200"])
def test_equals_xla_chunked(shape, dtype):
    x, c = _data(*shape, seed=4)
    x, c = jnp.asarray(x, dtype), jnp.asarray(c, dtype)
    ref_idx, ref_dist = search_chunked(x, c, "l2", block_k=64)
    idx, dist = _search(x, c)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-5)


def _kernel_dots(jaxpr, inside=False):
    """(precision, input dtype, accumulation dtype) of every dot inside a pallas_call."""
    for eqn in jaxpr.eqns:
        in_kernel = inside or eqn.primitive.name == "pallas_call"
        if in_kernel and eqn.primitive.name == "dot_general":
            p = eqn.params
            yield p["precision"], eqn.invars[0].aval.dtype, p["preferred_element_type"]
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    yield from _kernel_dots(sub, in_kernel)


@pytest.mark.parametrize("d", [16, 300])
def test_kernel_dot_precision(d):
    # Interpret mode on CPU computes float32 dots exactly whatever the precision, but the
    # Triton lowering turns DEFAULT precision into TF32, which would round the inputs and
    # break exact ties on a GPU: float32 must ask for HIGHEST (IEEE), and bfloat16 must
    # reach the dot as bfloat16 with float32 accumulation.
    expected = {
        jnp.float32: ((jax.lax.Precision.HIGHEST,) * 2, jnp.float32, jnp.float32),
        jnp.bfloat16: (None, jnp.bfloat16, jnp.float32),
    }
    for dtype, want in expected.items():
        spec = jax.ShapeDtypeStruct((64, d), dtype)
        jaxpr = jax.make_jaxpr(lambda a, b: search_pallas_gpu(a, b))(spec, spec)
        assert list(_kernel_dots(jaxpr.jaxpr)) == [want]


@pytest.mark.parametrize("bad", [dict(block_n=8), dict(block_k=24), dict(block_k=0)])
def test_rejects_non_power_of_two_blocks(bad):
    x, c = _data(4, 4, 4)
    with pytest.raises(ValueError, match="power of two"):
        search_pallas_gpu(x, c, interpret=True, **bad)


def _triton_target() -> str:
    """The custom call the installed jaxlib lowers a Pallas Triton kernel to."""
    from jax._src.lib import version as jaxlib_version

    # Up to jaxlib 0.10.2, the Triton IR is embedded for XLA to compile; later versions
    # compile it at lowering time (which needs the CUDA plugin) into a kernel-call FFI.
    if jaxlib_version <= (0, 10, 2):
        return "__gpu$xla.gpu.triton"
    import jaxlib.gpu_triton

    if not hasattr(jaxlib.gpu_triton, "TritonKernel"):
        pytest.skip("this jaxlib compiles Triton while lowering; needs the CUDA plugin")
    return "triton_kernel_call_ffi"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    "shape", [(1000, 1024, 64), (300, 77, 13), (256, 512, 300), (2048, 1200, 32)]
)
def test_lowers_to_triton_for_cuda(shape, dtype):
    # Lowering runs the Pallas -> Triton translation, which rejects non-power-of-two tiles,
    # dots smaller than 16 and unsupported ops; (256, 512, 300) takes the chunked-D path.
    n, k, d = shape
    target = _triton_target()
    exported = export.export(
        jax.jit(lambda a, b: search_pallas_gpu(a, b)),
        platforms=["cuda"],
        # Triton IR carries no stability guarantee, so export refuses it unless allowed.
        disabled_checks=[export.DisabledSafetyCheck.custom_call(target)],
    )(jax.ShapeDtypeStruct((n, d), dtype), jax.ShapeDtypeStruct((k, d), dtype))
    text = exported.mlir_module()
    calls = re.findall(r"stablehlo\.custom_call @([^\s(]+)\(", text)
    assert calls == [target], calls
    assert [a.shape for a in exported.out_avals] == [(n,), (n,)]
    assert [a.dtype for a in exported.out_avals] == [jnp.int32, jnp.float32]


def test_auto_dispatch_picks_the_kernel_for_cuda():
    from mmjax.kernels import codebook_search

    target = _triton_target()

    def calls(n, k):
        exported = export.export(
            jax.jit(lambda a, b: codebook_search(a, b)),
            platforms=["cuda"],
            disabled_checks=[export.DisabledSafetyCheck.custom_call(target)],
        )(jax.ShapeDtypeStruct((n, 32), jnp.float32), jax.ShapeDtypeStruct((k, 32), jnp.float32))
        return re.findall(r"stablehlo\.custom_call @([^\s(]+)\(", exported.mlir_module())

    assert calls(4096, 4096) == [target]  # large: the Triton kernel
    assert target not in calls(64, 64)  # small: plain XLA
