"""Reconstruction quality per modality, on postprocessed (modality-space) values."""

import numpy as np

from mmjax.eval.image_metrics import psnr


def reconstruction_metrics(modality: str, target, recon) -> dict:
    """rgb: PSNR (dB); depth: PSNR on depth / max depth and mean absolute error on hit
    pixels; normals: mean angular error (degrees) on hit pixels; semseg: pixel accuracy and
    mean IoU over the classes present in the target."""
    t, r = np.asarray(target), np.asarray(recon)
    if modality == "rgb":
        return {"psnr": psnr(t, np.clip(r, 0, 1))}
    if modality == "depth":
        scale = max(float(t.max()), 1e-6)
        hit = t > 0
        return {
            "psnr": psnr(t / scale, np.clip(r / scale, 0, 1)),
            "abs_err": float(np.abs(t - r)[hit].mean()) if hit.any() else 0.0,
        }
    if modality == "normals":
        hit = np.linalg.norm(t, axis=-1) > 0.5
        cos = np.sum(t * r, axis=-1) / np.maximum(np.linalg.norm(r, axis=-1), 1e-6)
        angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        return {"angle_deg": float(angle[hit].mean()) if hit.any() else 0.0}
    if modality == "semseg":
        classes = np.unique(t)
        ious = [np.sum((t == c) & (r == c)) / np.sum((t == c) | (r == c)) for c in classes]
        return {"pixel_acc": float(np.mean(t == r)), "miou": float(np.mean(ious))}
    raise ValueError(f"reconstruction_metrics: unknown modality {modality!r}")
