"""Shading and per-pixel modalities of one scene (everything except captions)."""

import numpy as np

from mmjax.data.scenes.constants import (
    AMBIENT,
    BACKGROUND_CLASS,
    COLOR_RGB,
    DIFFUSE,
    FLOOR_CHECKER,
    FLOOR_CLASS,
    FLOOR_RGB,
    FLOOR_TILE,
    SHININESS,
    SKY_BOTTOM_RGB,
    SKY_TOP_RGB,
    SPECULAR,
)
from mmjax.data.scenes.raycast import camera_rays, cast, shadowed


def floor_albedo(points):
    """Floor albedo [N, 3] at world points [N, 3]: a subtle checker of unit tiles."""
    tiles = np.floor(points[:, 0] / FLOOR_TILE) + np.floor(points[:, 1] / FLOOR_TILE)
    sign = 1.0 - 2.0 * np.mod(tiles, 2.0)  # +1 / -1
    return FLOOR_RGB * (1.0 + FLOOR_CHECKER * sign)[:, None]


def sky(resolution: int):
    """Background colour [R, R, 3]: a vertical gradient."""
    w = (np.arange(resolution) + 0.5) / resolution
    col = SKY_TOP_RGB * (1.0 - w[:, None]) + SKY_BOTTOM_RGB * w[:, None]
    return np.broadcast_to(col[:, None, :], (resolution, resolution, 3))


def render(scene, resolution: int) -> dict:
    """Ray-cast and shade ``scene``; returns float64/int arrays (flattened helpers kept for
    the caller): rgb, depth, normals (camera space), semseg, instance, shadow, own_hit."""
    camera = scene.camera
    objects = scene.objects
    eye, dirs = camera_rays(camera, resolution)
    t, n_world, surface, per_object = cast(eye, dirs, objects)
    hit = surface >= 0
    points = eye + np.where(hit, t, 0.0)[:, None] * dirs

    # Albedo per hit pixel.
    albedo = np.zeros_like(dirs)
    on_floor = surface == 0
    albedo[on_floor] = floor_albedo(points[on_floor])
    obj_colors = np.array([COLOR_RGB[o.color] for o in objects], np.float64).reshape(-1, 3)
    on_obj = surface >= 1
    albedo[on_obj] = obj_colors[surface[on_obj] - 1]

    # Direct light: Lambertian + (objects only) Blinn-Phong highlight, cast shadows.
    light = scene.light_dir
    ndotl = n_world @ light
    need = hit & (ndotl > 0.0)
    shadow = np.zeros(len(dirs), dtype=bool)
    if objects:
        idx = np.flatnonzero(need)
        shadow[idx] = shadowed(points[idx], n_world[idx], light, objects)
    lit = need & ~shadow
    diffuse = np.where(lit, DIFFUSE * ndotl, 0.0)
    rgb = albedo * (AMBIENT + diffuse)[:, None]
    view = -dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    half = view + light
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    spec = SPECULAR * np.maximum(np.einsum("ij,ij->i", n_world, half), 0.0) ** SHININESS
    rgb += np.where(lit & on_obj, spec, 0.0)[:, None]
    rgb = np.where(hit[:, None], rgb, sky(resolution).reshape(-1, 3))
    rgb = np.clip(rgb, 0.0, 1.0)

    # Camera-space modalities.
    right, up, forward = camera.basis()
    to_cam = np.stack([right, up, -forward])  # rows: camera axes in world coordinates
    normals = n_world @ to_cam.T
    semseg = np.full(len(dirs), BACKGROUND_CLASS, dtype=np.int32)
    semseg[on_floor] = FLOOR_CLASS
    classes = np.array([o.semseg_class for o in objects], np.int32)
    semseg[on_obj] = classes[surface[on_obj] - 1]
    instance = np.maximum(surface, 0).astype(np.int32)

    r = resolution
    return {
        "rgb": rgb.reshape(r, r, 3),
        "depth": np.where(hit, t, 0.0).reshape(r, r),
        "normals": normals.reshape(r, r, 3),
        "semseg": semseg.reshape(r, r),
        "instance": instance.reshape(r, r),
        "shadow": shadow.reshape(r, r),
        "own_hit": np.isfinite(per_object).reshape(len(objects), r, r),
    }
