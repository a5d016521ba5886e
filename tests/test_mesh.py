"""Mesh shapes from config: one -1 takes the rest; clear errors otherwise."""

import jax
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
