"""The dense-map metrics in the scenes' units: the generic ones (mmjax.eval.dense_metrics), with
the scenes' class count as the semseg default."""

from __future__ import annotations

from mmjax.data.scenes.constants import SEMSEG_CLASSES
from mmjax.eval.dense_metrics import ANGLE_THRESHOLDS, depth_errors, normals_angular_error
from mmjax.eval.dense_metrics import semseg_miou as generic_semseg_miou

NUM_SEMSEG_CLASSES = len(SEMSEG_CLASSES)

__all__ = [
    "ANGLE_THRESHOLDS",
    "NUM_SEMSEG_CLASSES",
    "depth_errors",
    "normals_angular_error",
    "semseg_miou",
]


def semseg_miou(pred, true, num_classes: int = NUM_SEMSEG_CLASSES) -> dict:
    """``dense_metrics.semseg_miou`` with ``num_classes`` defaulting to ``len(SEMSEG_CLASSES)``
    (5: background, floor, sphere, cube, cylinder)."""
    return generic_semseg_miou(pred, true, num_classes)
