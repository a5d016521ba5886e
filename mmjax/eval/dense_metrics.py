"""Dense-map metrics for any evaluation (tokenizer reconstructions, any-to-any predictions): depth
errors, surface-normal angular error, semantic-segmentation mIoU; numpy only, plain floats out.

Conventions: mIoU is the mean IoU over the classes present in the prediction or the target (a
class absent from both is left out); the angular error is in degrees, averaged over valid
pixels. A depth of 0 or a zero normal marks a pixel with no ground truth (the scenes' sky). Bad
inputs (shape mismatches, values out of range, wrong dtypes) raise ValueError naming the
argument and what was expected.
"""

from __future__ import annotations

import numpy as np

from mmjax.eval.checks import class_ids, fail, finite, same_shape, valid_mask

ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)  # degrees


# ---------------------------------------------------------------------------------- depth
def depth_errors(pred, true, valid=None) -> dict[str, float]:
    """Depth errors over valid pixels.

    Args:
      pred, true: depth maps of equal shape ([H, W] or [B, H, W]), camera z-depth in world units,
        finite and >= 0. ``true == 0`` marks pixels with no ground truth (the scenes encode no
        hit, the sky, as exactly 0).
      valid: optional bool mask of the same shape; it must lie inside ``true > 0`` (the default).

    Returns ``abs_rel`` (mean |pred - true| / true), ``rmse``, ``mae`` (world units), ``delta1``
    (fraction with max(pred/true, true/pred) < 1.25; a predicted 0 never counts) and
    ``num_valid``. A predicted 0 on a valid pixel (the model says "sky") is an ordinary error of
    ``true``, abs_rel 1.
    """
    fn = "depth_errors"
    p = finite(fn, "pred", pred)
    t = finite(fn, "true", true)
    same_shape(fn, p, t)
    if t.ndim < 2:
        fail(fn, "true", f"must be a depth map [H, W] or a batch [B, H, W], got shape {t.shape}")
    for name, a in (("pred", p), ("true", t)):
        if a.size and a.min() < 0:
            fail(fn, name, f"must be depths >= 0 (0 = no hit), got minimum {a.min():.4g}")
    mask = valid_mask(fn, valid, t.shape, t > 0, "true > 0")
    pv, tv = p[mask], t[mask]
    err = pv - tv
    pos = pv > 0
    within = np.zeros(len(pv), dtype=bool)
    within[pos] = np.maximum(pv[pos] / tv[pos], tv[pos] / pv[pos]) < 1.25
    return {
        "abs_rel": float(np.mean(np.abs(err) / tv)),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "delta1": float(np.mean(within)),
        "num_valid": int(mask.sum()),
    }


# ---------------------------------------------------------------------------------- normals
def normals_angular_error(pred, true, valid=None) -> dict[str, float]:
    """Angle between predicted and true surface normals, in degrees, over valid pixels.

    Args:
      pred, true: [..., 3] of equal shape, components in [-1, 1]. ``true`` holds camera-space
        unit vectors, exactly 0 where there is no ground truth (an image encoded as
        (n + 1) / 2 fails the unit-length check). ``pred`` is normalized here; a zero vector
        (the model says "sky") on a valid pixel counts as 90 degrees.
      valid: optional bool mask of shape ``true.shape[:-1]``; it must lie inside
        ``|true| > 0.5`` (the default).

    Returns ``mean``, ``median`` (degrees), ``within_11.25``, ``within_22.5``, ``within_30``
    (fraction of pixels with an angle <= the threshold) and ``num_valid``.
    """
    fn = "normals_angular_error"
    p = finite(fn, "pred", pred)
    t = finite(fn, "true", true)
    same_shape(fn, p, t)
    if t.ndim < 2 or t.shape[-1] != 3:
        fail(fn, "true", f"must be normals [..., 3], got shape {t.shape}")
    for name, a in (("pred", p), ("true", t)):
        if a.size and np.abs(a).max() > 1.0 + 1e-3:
            fail(fn, name, f"components must lie in [-1, 1], got [{a.min():.4g}, {a.max():.4g}]")
    t_norm = np.linalg.norm(t, axis=-1)
    if np.any((np.abs(t_norm - 1.0) > 1e-2) & (t_norm > 1e-6)):
        fail(fn, "true", "must hold unit vectors (or exactly 0 where nothing was hit)")
    mask = valid_mask(fn, valid, t.shape[:-1], t_norm > 0.5, "|true| > 0.5")
    pv, tv = p[mask], t[mask] / t_norm[mask][:, None]
    cross = np.linalg.norm(np.cross(pv, tv), axis=-1)
    dot = np.sum(pv * tv, axis=-1)
    # atan2 of the unnormalized pred is exact in angle and well conditioned near 0 and 180.
    angle = np.degrees(np.arctan2(cross, dot))
    angle = np.where(np.linalg.norm(pv, axis=-1) > 1e-6, angle, 90.0)
    out = {"mean": float(angle.mean()), "median": float(np.median(angle))}
    for th in ANGLE_THRESHOLDS:
        out[f"within_{th:g}"] = float(np.mean(angle <= th))
    out["num_valid"] = int(mask.sum())
    return out


# ---------------------------------------------------------------------------------- semseg
def semseg_miou(pred, true, num_classes: int) -> dict:
    """Mean intersection-over-union and pixel accuracy of class maps of equal shape.

    The mean runs over the classes present in ``true`` or ``pred`` (union > 0); a class absent
    from both is left out (its ``per_class_iou`` entry is nan). Returns ``miou``,
    ``pixel_accuracy``, ``per_class_iou`` (float64 [num_classes]) and ``num_classes_counted``.
    """
    fn = "semseg_miou"
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        fail(fn, "num_classes", f"must be an int, got {num_classes!r}")
    if num_classes < 1:
        fail(fn, "num_classes", f"must be >= 1, got {num_classes}")
    p = class_ids(fn, "pred", pred, num_classes)
    t = class_ids(fn, "true", true, num_classes)
    same_shape(fn, p, t)
    if t.size == 0:
        fail(fn, "true", "is empty")
    k = int(num_classes)
    cm = np.bincount((t * k + p).ravel(), minlength=k * k).reshape(k, k)  # [true, pred]
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
    counted = union > 0
    return {
        "miou": float(iou[counted].mean()),
        "pixel_accuracy": float(inter.sum() / t.size),
        "per_class_iou": iou,
        "num_classes_counted": int(counted.sum()),
    }
