"""Evaluation: image and dense-map metrics, reconstruction metrics, any-to-any metrics and
baselines on the scenes (mmjax.eval.scenes), PNG grids."""

from mmjax.eval.grid import save_image_grid
from mmjax.eval.image_metrics import psnr
from mmjax.eval.reconstruction import reconstruction_metrics
from mmjax.eval.scenes import (
    box_iou,
    box_iou_match,
    caption_objects,
    caption_recall_precision,
    colour_presence,
    depth_errors,
    frequent_objects_caption_baseline,
    majority_class_baseline,
    mean_depth_baseline,
    mean_image_baseline,
    mean_normals_baseline,
    normals_angular_error,
    objects_caption,
    semseg_miou,
    visible_objects,
)
from mmjax.eval.visualize import to_rgb

__all__ = [
    "box_iou",
    "box_iou_match",
    "caption_objects",
    "caption_recall_precision",
    "colour_presence",
    "depth_errors",
    "frequent_objects_caption_baseline",
    "majority_class_baseline",
    "mean_depth_baseline",
    "mean_image_baseline",
    "mean_normals_baseline",
    "normals_angular_error",
    "objects_caption",
    "psnr",
    "reconstruction_metrics",
    "save_image_grid",
    "semseg_miou",
    "to_rgb",
    "visible_objects",
]
