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
