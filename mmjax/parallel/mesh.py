"""The device mesh: axes ('data', 'fsdp', 'tensor'), sizes from config with one -1;
across TPU slices, DCN sizes that multiply the per-slice axes."""

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
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


def slice_count(devices: Sequence) -> int:
    """How many TPU slices `devices` span (`device.slice_index`; 1 where devices have none)."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def split_sizes(sizes: Mapping[str, int]) -> tuple[dict, tuple[int, ...]]:
    """{'data': -1, 'dcn_data': 2, ...} -> ({'data': -1}, dcn shape over MESH_AXES).

    The 'dcn_*' sizes say how many slices each axis spans (over the data-center network);
    the plain sizes are per slice.
    """
    ici = {k: v for k, v in sizes.items() if not k.startswith("dcn_")}
    dcn = {k[len("dcn_") :]: v for k, v in sizes.items() if k.startswith("dcn_")}
    unknown = sorted(set(dcn) - set(MESH_AXES))
    if unknown:
        raise ValueError(
            f"mesh: unknown DCN axis name(s) {['dcn_' + a for a in unknown]}; expected some of "
            f"{tuple('dcn_' + a for a in MESH_AXES)}"
        )
    shape = tuple(int(dcn.get(axis, 1)) for axis in MESH_AXES)
    if any(s < 1 for s in shape):
        raise ValueError(f"mesh: DCN sizes must be >= 1 (no -1), got {dcn}")
    return ici, shape


def device_grid(sizes: Mapping[str, int] | None, devices: Sequence) -> np.ndarray:
    """`devices` arranged as an array of shape MESH_AXES: within a slice in a topology-aware
    order; across slices (devices with `slice_index`) by `jax.experimental.mesh_utils.
    create_hybrid_device_mesh`, the slow DCN part of each axis outermost."""
    devices = list(devices)
    ici_sizes, dcn_shape = split_sizes(sizes or {"data": -1})
    slices = slice_count(devices)
    if slices > 1 and math.prod(dcn_shape) == 1 and devices[0].platform != "tpu":
        slices = 1  # e.g. GPU hosts in separate partitions: one flat mesh unless asked
    if math.prod(dcn_shape) != slices:
        dcn = dict(zip(("dcn_" + a for a in MESH_AXES), dcn_shape, strict=True))
        raise ValueError(
            f"mesh: the devices span {slices} slice(s) but the DCN sizes {dcn} multiply to "
            f"{math.prod(dcn_shape)}; set them to cover the slices, e.g. "
            f"--config.mesh.dcn_data={slices}"
        )
    if len(devices) % slices:
        raise ValueError(f"mesh: {len(devices)} devices do not split evenly over {slices} slices")
    shape = mesh_shape(ici_sizes, len(devices) // slices)
    if slices > 1:
        return mesh_utils.create_hybrid_device_mesh(shape, dcn_shape, devices=devices)
    try:
        return mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        return np.asarray(devices).reshape(shape)


def create_mesh(sizes: Mapping[str, int] | None = None, devices: Sequence | None = None) -> Mesh:
    """A Mesh over `devices` (default: all) with axes MESH_AXES.

    `sizes` holds per-slice axis sizes and, for several slices, 'dcn_data' / 'dcn_fsdp' /
    'dcn_tensor' (how many slices each axis spans; their product is the slice count). Each
    mesh axis is its DCN size times its per-slice size, so the logical rules are unchanged.
    """
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(device_grid(sizes, devices), MESH_AXES)
