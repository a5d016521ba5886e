"""Reconstruction quality per modality, on postprocessed (modality-space) values."""

import numpy as np

from mmjax.eval.dense_metrics import depth_errors, normals_angular_error, semseg_miou
from mmjax.eval.image_metrics import psnr


def reconstruction_metrics(modality: str, target, recon) -> dict:
    """rgb: PSNR (dB); depth: PSNR on depth / max depth and mean absolute error on hit
    pixels; normals: mean angular error (degrees) on hit pixels; semseg: pixel accuracy and
    mean IoU over the classes present in the target or the reconstruction. Depth, normals and
    semseg use mmjax.eval.dense_metrics; with no hit pixel, abs_err and angle_deg are 0."""
    t, r = np.asarray(target), np.asarray(recon)
    if modality == "rgb":
        return {"psnr": psnr(t, np.clip(r, 0, 1))}
    if modality == "depth":
        scale = max(float(t.max()), 1e-6)
        hit = t > 0
        return {
            "psnr": psnr(t / scale, np.clip(r / scale, 0, 1)),
            "abs_err": depth_errors(r, t)["mae"] if hit.any() else 0.0,
        }
    if modality == "normals":
        hit = np.linalg.norm(t, axis=-1) > 0.5
        return {"angle_deg": normals_angular_error(r, t)["mean"] if hit.any() else 0.0}
    if modality == "semseg":
        num_classes = int(max(t.max(), r.max())) + 1 if t.size else 1
        out = semseg_miou(r, t, num_classes)
        return {"pixel_acc": out["pixel_accuracy"], "miou": out["miou"]}
    raise ValueError(f"reconstruction_metrics: unknown modality {modality!r}")
