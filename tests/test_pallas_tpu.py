"""What is particular to the Pallas Mosaic (TPU) codebook search: TPU-semantics
interpretation, and compiles with the real TPU compiler for v4, v5e, v5p and v6e from this
CPU host (marker tpu_aot, needs jax[tpu]). The shared behaviour (shapes, ties, padding,
dtypes, vmap, sharding) is tested for every path, this one included, in
test_codebook_search.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.kernels import codebook_search
from mmjax.kernels.codebook_search.pallas_tpu import search_pallas_tpu
from mmjax.parallel import create_mesh
from mmjax.quantizers import VectorQuantizer
from tests.references import np_nearest

TOPOLOGIES = ["v4:2x2x1", "v5e:2x2", "v5p:2x2x1", "v6e:2x2"]


def test_tpu_simulator_semantics_with_ties_across_blocks():
    # The TPU interpreter checks TPU memory semantics (blocks, scratch, program order).
    rng = np.random.default_rng(0)
    base = rng.integers(-2, 3, size=(24, 5)).astype(np.float32)
    codebook = np.concatenate([base, base])  # copies 24 apart: ties cross 16-code blocks
    x = np.concatenate([base, np.zeros((3, 5), np.float32)])
    idx, dist = search_pallas_tpu(
        x, codebook, block_n=128, block_k=16, interpret=pltpu.InterpretParams()
    )
    ref_idx, ref_min, _ = np_nearest(x, codebook)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_min, atol=1e-5)


def _topology(name):
    from jax.experimental import topologies

    return topologies.get_topology_desc(platform="tpu", topology_name=name)


def _spec(shape, dtype, device):
    mesh = jax.sharding.Mesh(np.array([device]), ("one",))
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P()))


@pytest.mark.tpu_aot
@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_kernel_compiles_for_tpu(topology, dtype):
    device = _topology(topology).devices[0]
    for n, k, d in [(65536, 16384, 32), (1000, 77, 13), (300, 1, 1), (4096, 8192, 256)]:
        fn = jax.jit(lambda a, b: codebook_search(a, b, impl="pallas", return_distance=True))
        compiled = fn.lower(_spec((n, d), dtype, device), _spec((k, d), dtype, device)).compile()
        hlo = compiled.as_text()
        assert "tpu_custom_call" in hlo, "the Mosaic kernel must be in the compiled program"
        # No N x K buffer: temporaries stay far below one float32 distance matrix.
        temp = compiled.memory_analysis().temp_size_in_bytes
        assert temp < max(n * k * 4 // 16, 2**20), (topology, (n, k, d), temp)


@pytest.mark.tpu_aot
def test_auto_picks_kernel_for_large_and_xla_for_small_on_tpu():
    device = _topology("v5e:2x2").devices[0]

    def hlo(n, k):
        fn = jax.jit(lambda a, b: codebook_search(a, b))
        lowered = fn.lower(_spec((n, 32), jnp.float32, device), _spec((k, 32), jnp.float32, device))
        return lowered.compile().as_text()

    assert "tpu_custom_call" in hlo(8192, 8192)
    assert "tpu_custom_call" not in hlo(64, 64)


@pytest.mark.tpu_aot
def test_sharded_vq_forward_compiles_for_a_pod_slice():
    devices = _topology("v5e:2x4").devices  # 8 chips
    mesh = create_mesh({"data": 2, "fsdp": 4, "tensor": 1}, devices=devices)
    q = VectorQuantizer(codebook_size=8192, dim=32)
    z = jax.ShapeDtypeStruct(
        (64, 32, 32, 32), jnp.bfloat16, sharding=NamedSharding(mesh, P(("data", "fsdp")))
    )
    variables = jax.eval_shape(q.init, jax.random.key(0), z)
    variables = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())),
        variables,
    )
    with jax.set_mesh(mesh):
        compiled = jax.jit(lambda v, x: q.apply(v, x)).lower(variables, z).compile()
    hlo = compiled.as_text()
    assert "tpu_custom_call" in hlo
    # The tokens are searched where they live: no gather of the 64x32x32 tokens.
    assert "all-gather" not in hlo
    n_local, k = 64 * 32 * 32 // 8, 8192
    assert compiled.memory_analysis().temp_size_in_bytes < n_local * k * 4 // 8
