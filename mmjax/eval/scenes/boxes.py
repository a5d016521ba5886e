"""Box IoU and one-to-one box matching, in the form of the scenes' boxes (inclusive pixel boxes
padded with rows of -1)."""

from __future__ import annotations

import numpy as np

from mmjax.eval.checks import fail, finite, ratio


def _boxes(fn: str, arg: str, boxes) -> tuple[np.ndarray, np.ndarray]:
    """(kept boxes float64 [N, 4], kept row mask [M]); rows of all -1 are padding."""
    b = finite(fn, arg, boxes)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        fail(fn, arg, f"must have shape [M, 4] (x_min, y_min, x_max, y_max), got {b.shape}")
    pad = np.all(b == -1, axis=1)
    keep = ~pad
    kb = b[keep]
    if np.any(kb < 0):
        fail(fn, arg, "has negative coordinates outside padding rows (padding is a row of -1)")
    if np.any(kb[:, 0] > kb[:, 2]) or np.any(kb[:, 1] > kb[:, 3]):
        fail(fn, arg, "has rows with x_min > x_max or y_min > y_max")
    return kb, keep


def _box_labels(fn: str, arg: str, labels, keep: np.ndarray) -> np.ndarray | None:
    if labels is None:
        return None
    a = np.asarray(labels)
    if a.ndim != 1 or len(a) != len(keep):
        fail(fn, arg, f"must have one id per box row ({len(keep)}), got shape {np.shape(labels)}")
    if not np.issubdtype(a.dtype, np.integer):
        fail(fn, arg, f"must hold integer ids, got dtype {a.dtype}")
    return a[keep]


def box_iou(a, b, inclusive: bool = True) -> np.ndarray:
    """IoU matrix [N, M] of boxes a [N, 4] and b [M, 4] (x_min, y_min, x_max, y_max). With
    ``inclusive`` the coordinates are pixel indices and a box covers x_max - x_min + 1 columns
    (the scenes' convention); otherwise they are continuous and it covers x_max - x_min."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    e = 1.0 if inclusive else 0.0
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(hi - lo + e, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0] + e) * (a[:, 3] - a[:, 1] + e)
    area_b = (b[:, 2] - b[:, 0] + e) * (b[:, 3] - b[:, 1] + e)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def box_iou_match(
    pred_boxes,
    true_boxes,
    pred_classes=None,
    true_classes=None,
    pred_colors=None,
    true_colors=None,
    *,
    inclusive: bool = True,
    iou_threshold: float = 0.5,
) -> dict:
    """Match predicted boxes to true boxes one-to-one and score the matches.

    Boxes are int or float [M, 4] ``(x_min, y_min, x_max, y_max)``; rows of all -1 are padding
    and dropped. This is the form of a scene's ``boxes`` and of ``tokens_to_scene_boxes``
    (inclusive pixel indices, ``inclusive=True``); pass ``inclusive=False`` for continuous
    boxes such as ``tokens_to_boxes`` bin centres. The optional ``*_classes`` / ``*_colors``
    are int [M] aligned with the rows (scene ``box_class`` / ``box_color``, or the class and
    colour ids ``tokens_to_scene_boxes`` returns); when a pair is given, a predicted box can
    only match a true box with the same id.

    Matching is greedy: repeatedly take the unmatched (true, pred) pair with the highest IoU
    (ties: lower true row, then lower pred row) while that IoU is > 0. Returns ``mean_iou``
    (the matched IoU averaged over true boxes, 0 for unmatched ones; with no true boxes it is
    1.0 when there are no predicted boxes either, else 0.0), ``recall`` and ``precision`` of
    matches with IoU >= ``iou_threshold`` (empty denominators give 1.0), ``matched_iou``
    (float64 [num_true]), ``num_true`` and ``num_pred``.
    """
    fn = "box_iou_match"
    if not 0.0 < iou_threshold <= 1.0:
        fail(fn, "iou_threshold", f"must lie in (0, 1], got {iou_threshold!r}")
    p, pkeep = _boxes(fn, "pred_boxes", pred_boxes)
    t, tkeep = _boxes(fn, "true_boxes", true_boxes)
    allowed = np.ones((len(t), len(p)), dtype=bool)
    for kind, pl, tl in (
        ("classes", pred_classes, true_classes),
        ("colors", pred_colors, true_colors),
    ):
        if (pl is None) != (tl is None):
            fail(fn, f"pred_{kind}/true_{kind}", "must both be given or both be None")
        pl = _box_labels(fn, f"pred_{kind}", pl, pkeep)
        tl = _box_labels(fn, f"true_{kind}", tl, tkeep)
        if pl is not None:
            allowed &= tl[:, None] == pl[None, :]
    iou = np.where(allowed, box_iou(t, p, inclusive), 0.0)  # [T, P]
    matched = np.zeros(len(t))
    if iou.size:
        flat = np.argsort(-iou, axis=None, kind="stable")  # row-major ties: true, then pred
        used_t = np.zeros(len(t), dtype=bool)
        used_p = np.zeros(len(p), dtype=bool)
        for f in flat:
            i, j = divmod(int(f), len(p))
            if iou[i, j] <= 0:
                break
            if not used_t[i] and not used_p[j]:
                used_t[i] = used_p[j] = True
                matched[i] = iou[i, j]
    empty = 1.0 if len(p) == 0 else 0.0  # no true boxes: right only if none predicted
    mean_iou = float(matched.mean()) if len(t) else empty
    good = int(np.sum(matched >= iou_threshold))
    return {
        "mean_iou": mean_iou,
        "recall": ratio(good, len(t)),
        "precision": ratio(good, len(p)),
        "matched_iou": matched,
        "num_true": len(t),
        "num_pred": len(p),
    }
