"""The device mesh: axes ('data', 'fsdp', 'tensor'), sizes from config with one -1."""

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")
# The batch is split over these axes (data parallel and FSDP); the rest see whole batches.
DATA_AXES = ("data", "fsdp")


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves {'data': -1, 'fsdp': 4, 'tensor': 1} against `num_devices`.

    Axes missing from `sizes` get 1; at most one axis may be -1 and takes the rest.
    """
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh: unknown axis name(s) {unknown}; expected some of {MESH_AXES}")
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    free = [i for i, s in enumerate(shape) if s == -1]
    if len(free) > 1 or any(s < 1 and s != -1 for s in shape):
        raise ValueError(f"mesh: sizes must be >= 1 with at most one -1, got {dict(sizes)}")
    fixed = math.prod(s for s in shape if s != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"mesh: {num_devices} devices do not divide into {dict(sizes)}")
        shape[free[0]] = num_devices // fixed
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"mesh: {dict(zip(MESH_AXES, shape, strict=True))} needs {math.prod(shape)} "
            f"devices, have {num_devices}"
        )
    return tuple(shape)


def create_mesh(sizes: Mapping[str, int] | None = None, devices: Sequence | None = None) -> Mesh:
    """A Mesh over `devices` (default: all) with axes MESH_AXES.

    Uses `jax.experimental.mesh_utils` for a topology-aware device order on TPU.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes or {"data": -1}, len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)
