"""Mesh shapes from config: one -1 takes the rest; clear errors otherwise."""

import jax
import numpy as np
import pytest

from mmjax.parallel import MESH_AXES, create_mesh, mesh_shape


def test_mesh_shape_resolves_minus_one():
    assert mesh_shape({"data": -1}, 8) == (8, 1, 1)
    assert mesh_shape({"data": 2, "fsdp": -1}, 8) == (2, 4, 1)
    assert mesh_shape({"data": 1, "fsdp": 2, "tensor": 4}, 8) == (1, 2, 4)


@pytest.mark.parametrize(
    "sizes, match",
    [
        ({"data": -1, "fsdp": -1}, "at most one -1"),
        ({"data": 3, "fsdp": -1}, "do not divide"),
        ({"data": 2, "fsdp": 2}, "needs 4 devices, have 8"),
        ({"batch": 8}, "unknown axis"),
        ({"data": 0, "fsdp": -1}, ">= 1"),
    ],
)
def test_mesh_shape_errors(sizes, match):
    with pytest.raises(ValueError, match=match):
        mesh_shape(sizes, 8)


def test_create_mesh_uses_all_devices(mesh):
    assert mesh.axis_names == MESH_AXES
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert set(mesh.devices.reshape(-1)) == set(jax.devices())
    assert create_mesh().devices.shape == (8, 1, 1)


def test_logical_rules_map_divisible_axes_and_replicate_the_rest(mesh):
    from jax.sharding import PartitionSpec as P

    from mmjax.parallel import logical_to_spec

    assert logical_to_spec(("embed", "mlp"), (64, 128), mesh) == P("fsdp", None)  # tensor=1
    assert logical_to_spec(("embed", "mlp"), (6, 128), mesh) == P(None, None)  # 6 % 4 != 0
    assert logical_to_spec(("act_batch", None), (16, 3), mesh) == P(("data", "fsdp"), None)
    assert logical_to_spec(("act_batch", "embed"), (16, 64), mesh) == P(("data", "fsdp"), None)
    assert logical_to_spec((None, "unknown"), (4, 4), mesh) == P(None, None)


def test_state_shardings_follow_the_boxes(mesh):
    import flax.linen as nn
    import jax.numpy as jnp
    import optax
    from jax.sharding import PartitionSpec as P

    from mmjax.parallel import state_shardings

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            w = self.param(
                "w", nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp")), (8, 16)
            )
            b = self.param("b", nn.initializers.zeros, (16,))
            return x @ w + b

    def init(key):
        params = Tiny().init(key, jnp.ones((1, 8)))["params"]
        return {"params": params, "opt": optax.adam(1e-3).init(params)}

    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = state_shardings(abstract, mesh)
    assert shardings["params"]["w"].spec == P("fsdp", None)
    assert shardings["params"]["b"].spec == P()
    assert shardings["opt"][0].mu["w"].spec == P("fsdp", None)  # optimizer state follows
    state = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(jax.random.key(0))
    assert state["params"]["w"].sharding.spec == P("fsdp", None)
    np.testing.assert_array_equal(state["params"]["w"], np.ones((8, 16)))


# --- several slices (DCN axes) ----------------------------------------------------------------


class FakeDevice:
    """What the mesh code reads of a device: id, platform, kind and TPU slice."""

    platform, device_kind = "cpu", "fake"

    def __init__(self, id, slice_index):
        self.id, self.slice_index = id, slice_index

    def __repr__(self):
        return f"D{self.id}@{self.slice_index}"


def _fake_slices(slices, per_slice):
    # shuffled, so the grid's order comes from slice_index and not from the list
    devices = [FakeDevice(i, i // per_slice) for i in range(slices * per_slice)]
    return [devices[i] for i in np.random.default_rng(0).permutation(len(devices))]


def test_hybrid_grid_puts_each_slice_in_its_own_block_of_the_dcn_axis():
    from mmjax.parallel.mesh import device_grid

    grid = device_grid({"data": -1, "fsdp": 2, "dcn_data": 2}, _fake_slices(2, 8))
    assert grid.shape == (8, 2, 1)  # data = 2 slices x 4 per slice
    slice_of = np.vectorize(lambda d: d.slice_index)(grid)
    np.testing.assert_array_equal(slice_of[:4], 0)
    np.testing.assert_array_equal(slice_of[4:], 1)
    assert sorted(d.id for d in grid.flat) == list(range(16))
    # dcn over fsdp: the fsdp axis spans slices, every data row stays split the same way
    grid = device_grid({"data": 2, "fsdp": -1, "dcn_fsdp": 3}, _fake_slices(3, 4))
    assert grid.shape == (2, 6, 1)
    slice_of = np.vectorize(lambda d: d.slice_index)(grid)
    np.testing.assert_array_equal(slice_of[:, :, 0], [[0, 0, 1, 1, 2, 2]] * 2)


@pytest.mark.parametrize(
    "sizes, slices, match",
    [
        ({"data": -1, "dcn_data": 2}, 1, r"span 1 slice\(s\) but the DCN sizes .* multiply to 2"),
        ({"data": -1, "dcn_data": 2, "dcn_fsdp": 2}, 2, "multiply to 4"),
        ({"data": -1, "dcn_batch": 2}, 2, r"unknown DCN axis name\(s\) \['dcn_batch'\]"),
        ({"data": -1, "dcn_data": -1}, 2, "DCN sizes must be >= 1"),
        ({"data": 3, "dcn_data": 2}, 2, "needs 3 devices, have 4"),
    ],
)
def test_dcn_size_errors(sizes, slices, match):
    from mmjax.parallel.mesh import device_grid

    with pytest.raises(ValueError, match=match):
        device_grid(sizes, _fake_slices(slices, 8 // slices))


def test_slices_off_tpu_without_dcn_sizes_make_one_flat_mesh():
    """GPU hosts may report partitions as slices; without dcn_* sizes the mesh stays flat."""
    from mmjax.parallel.mesh import device_grid

    devices = _fake_slices(2, 4)
    assert list(device_grid({"fsdp": -1}, devices).flat) == devices


def test_config_mesh_with_dcn_sizes_of_one_on_one_host():
    from mmjax.configs import fourm
    from mmjax.train.config_record import to_dict

    sizes = to_dict(fourm.get_config("fsdp").mesh)
    assert sizes["dcn_data"] == sizes["dcn_fsdp"] == sizes["dcn_tensor"] == 1
    assert dict(create_mesh(sizes).shape) == {"data": 1, "fsdp": 8, "tensor": 1}


@pytest.mark.tpu_aot
def test_hybrid_mesh_over_two_tpu_slices():
    """Real TPU devices of two v5e:2x2 slices: 'data' spans the slices, 'fsdp' stays inside."""
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(
        platform="tpu", topology_name="v5e:2x2", num_slices=2
    ).devices
    assert {d.slice_index for d in devices} == {0, 1}
    mesh = create_mesh({"data": -1, "fsdp": 2, "dcn_data": 2}, devices=devices)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    np.testing.assert_array_equal(slice_of[:, :, 0], [[0, 0], [0, 0], [1, 1], [1, 1]])
    with pytest.raises(ValueError, match="dcn_data=2"):
        create_mesh({"data": -1}, devices=devices)
