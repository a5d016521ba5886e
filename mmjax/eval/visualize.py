"""Any modality as an RGB image in [0, 1], for PNG grids."""

import numpy as np

from mmjax.data.scenes.contact_sheet import SEMSEG_PALETTE as SCENE_SEMSEG_PALETTE

# The scenes' class colours (background, floor, sphere, cube, cylinder); more classes cycle.
SEMSEG_PALETTE = SCENE_SEMSEG_PALETTE.astype(np.float32) / 255.0


def to_rgb(modality: str, value) -> np.ndarray:
    a = np.asarray(value)
    if modality == "rgb":
        return np.clip(a, 0, 1)
    if modality == "depth":
        a = a[..., 0] if a.ndim == 3 else a
        hit = a > 0
        lo, hi = (a[hit].min(), a[hit].max()) if hit.any() else (0.0, 1.0)
        g = np.where(hit, 1.0 - (a - lo) / max(hi - lo, 1e-6) * 0.85, 0.0)
        return np.repeat(g[..., None], 3, axis=-1)
    if modality == "normals":
        return np.clip(a * 0.5 + 0.5, 0, 1) * (np.linalg.norm(a, axis=-1, keepdims=True) > 0.5)
    if modality == "semseg":
        return SEMSEG_PALETTE[np.asarray(a, int) % len(SEMSEG_PALETTE)]
    raise ValueError(f"to_rgb: unknown modality {modality!r}")
