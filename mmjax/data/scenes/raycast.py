"""Vectorized analytic ray casting (all pixels at once, float64).

Rays are ``origin + t * direction``. Primary rays use directions whose component along the
camera's forward axis is exactly 1, so the hit parameter ``t`` IS the camera z-depth.
Every ``intersect_*`` returns ``(t, normal)``: ``t`` [N] is the nearest hit with
``t > eps`` (``inf`` on a miss) and ``normal`` [N, 3] the outward world-space unit normal
there (meaningless on a miss). Origins may be one point [3] or one per ray [N, 3].
"""

import numpy as np

from mmjax.data.scenes.constants import FLOOR_HALF_EXTENT, SHAPE_NAMES

EPS = 1e-7
SHADOW_OFFSET = 1e-5


def pixel_offsets(fov: float, resolution: int):
    """Image-plane coordinates (sx, sy) [R, R] of pixel centres at unit forward distance:
    a pixel's ray is ``forward + sx * right + sy * up``."""
    half = np.tan(fov / 2.0)
    c = (np.arange(resolution, dtype=np.float64) + 0.5) * (2.0 / resolution) - 1.0
    sx = np.broadcast_to(c[None, :] * half, (resolution, resolution))
    sy = np.broadcast_to(-c[:, None] * half, (resolution, resolution))
    return sx, sy


def camera_rays(camera, resolution: int):
    """Eye [3] and ray directions [R*R, 3] (row-major pixels, forward component 1)."""
    right, up, forward = camera.basis()
    sx, sy = pixel_offsets(camera.fov, resolution)
    dirs = forward + sx.reshape(-1, 1) * right + sy.reshape(-1, 1) * up
    return camera.eye, dirs


def _dot(a, b):
    return np.einsum("...i,...i->...", a, b)


def intersect_floor(origin, dirs):
    oz = origin[..., 2]
    dz = dirs[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -oz / dz
    p = origin + t[:, None] * dirs
    hit = (
        (t > EPS) & (np.abs(p[:, 0]) <= FLOOR_HALF_EXTENT) & (np.abs(p[:, 1]) <= FLOOR_HALF_EXTENT)
    )
    normal = np.zeros_like(dirs)
    normal[:, 2] = 1.0
    return np.where(hit, t, np.inf), normal


def intersect_sphere(origin, dirs, centre, radius):
    oc = origin - centre
    a = _dot(dirs, dirs)
    b = _dot(oc, dirs)
    c = _dot(oc, oc) - radius * radius
    disc = b * b - a * c
    sq = np.sqrt(np.maximum(disc, 0.0))
    t0 = (-b - sq) / a
    t1 = (-b + sq) / a
    t = np.where(t0 > EPS, t0, np.where(t1 > EPS, t1, np.inf))
    t = np.where(disc >= 0.0, t, np.inf)
    with np.errstate(invalid="ignore"):
        normal = (oc + t[:, None] * dirs) / radius
    return t, normal


def intersect_box(origin, dirs, centre, half, yaw):
    """Cube of half-edge ``half`` rotated by ``yaw`` about the vertical axis: slab test in
    the cube's frame."""
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # local -> world
    o_l = (origin - centre) @ rot  # world -> local (rot is orthonormal)
    d_l = dirs @ rot
    d_safe = np.where(d_l == 0.0, 1e-300, d_l)
    inv = 1.0 / d_safe
    ta = (-half - o_l) * inv
    tb = (half - o_l) * inv
    t_lo = np.minimum(ta, tb)
    t_hi = np.maximum(ta, tb)
    axis = np.argmax(t_lo, axis=1)
    rows = np.arange(len(dirs))
    t_near = t_lo[rows, axis]
    t_far = np.min(t_hi, axis=1)
    hit = (t_near <= t_far) & (t_far > EPS)
    t = np.where(hit, np.where(t_near > EPS, t_near, t_far), np.inf)
    n_l = np.zeros_like(dirs)
    n_l[rows, axis] = -np.sign(d_l[rows, axis])
    return t, n_l @ rot.T


def intersect_cylinder(origin, dirs, x, y, radius, height):
    """Upright capped cylinder: axis at (x, y), from z = 0 to z = height."""
    o = np.broadcast_to(origin, dirs.shape)
    ox = o[:, 0] - x
    oy = o[:, 1] - y
    oz = o[:, 2]
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - radius * radius
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        z_side = oz + t_side * dz
        side_ok = (disc >= 0.0) & (a > 0.0) & (t_side > EPS) & (z_side >= 0.0)
        side_ok &= z_side <= height
        t_side = np.where(side_ok, t_side, np.inf)
        best = t_side
        kind = np.zeros(len(dirs), dtype=np.int8)  # 0 side, 1 top, 2 bottom
        for k, zc in ((1, height), (2, 0.0)):
            tc = (zc - oz) / dz
            px = ox + tc * dx
            py = oy + tc * dy
            ok = (tc > EPS) & (px * px + py * py <= radius * radius)
            tc = np.where(ok, tc, np.inf)
            closer = tc < best
            best = np.where(closer, tc, best)
            kind = np.where(closer, k, kind)
        normal = np.stack(
            [(ox + best * dx) / radius, (oy + best * dy) / radius, np.zeros_like(best)], axis=1
        )
    normal[kind == 1] = (0.0, 0.0, 1.0)
    normal[kind == 2] = (0.0, 0.0, -1.0)
    return best, normal


def intersect_object(origin, dirs, obj):
    shape = SHAPE_NAMES[obj.shape]
    if shape == "sphere":
        return intersect_sphere(origin, dirs, obj.centre, obj.extent)
    if shape == "cube":
        return intersect_box(origin, dirs, obj.centre, obj.extent, obj.yaw)
    return intersect_cylinder(origin, dirs, obj.x, obj.y, obj.extent, obj.height)


def candidates(origin, dirs, obj):
    """Indices of rays that meet the object's bounding sphere ahead of their origin (a
    superset of the rays that hit it); the exact tests then run on these rays only."""
    centre = obj.centre
    radius = obj.bounding_radius * (1.0 + 1e-6) + 1e-9
    oc = origin - centre
    b = dirs @ oc if oc.ndim == 1 else np.einsum("ij,ij->i", dirs, oc)
    a = np.einsum("ij,ij->i", dirs, dirs)
    c = np.einsum("...i,...i->...", oc, oc) - radius * radius
    disc = b * b - a * c
    ahead = -b + np.sqrt(np.maximum(disc, 0.0)) > 0.0
    return np.flatnonzero((disc >= 0.0) & ahead)


def cast(origin, dirs, objects):
    """First hit of each ray against the floor and all objects.

    Returns ``t`` [N] (inf: nothing hit), world normals [N, 3] (0 where nothing hit),
    ``surface`` [N] int (-1 nothing, 0 floor, k >= 1 object k) and the per-object hit
    parameters [K, N] (each object alone, ignoring the others).
    """
    t_best, n_best = intersect_floor(origin, dirs)
    surface = np.where(np.isfinite(t_best), 0, -1)
    per_object = np.full((len(objects), len(dirs)), np.inf)
    for k, obj in enumerate(objects, start=1):
        idx = candidates(origin, dirs, obj)
        if not len(idx):
            continue
        o = origin if origin.ndim == 1 else origin[idx]
        t, n = intersect_object(o, dirs[idx], obj)
        per_object[k - 1, idx] = t
        closer = t < t_best[idx]
        sel = idx[closer]
        t_best[sel] = t[closer]
        n_best[sel] = n[closer]
        surface[sel] = k
    n_best[surface < 0] = 0.0
    return t_best, n_best, surface, per_object


def shadowed(points, normals, light_dir, objects):
    """True where the ray from ``points`` (pushed off the surface along ``normals``) toward
    the light hits any object."""
    origins = points + SHADOW_OFFSET * normals
    dirs = np.broadcast_to(light_dir, points.shape)
    blocked = np.zeros(len(points), dtype=bool)
    for obj in objects:
        idx = candidates(origins, dirs, obj)
        if len(idx):
            t, _ = intersect_object(origins[idx], dirs[idx], obj)
            blocked[idx] |= np.isfinite(t)
    return blocked
