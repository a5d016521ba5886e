"""Evaluation: image and dense-map metrics (PSNR, SSIM, MS-SSIM here; LPIPS in
mmjax.eval.lpips and rFID in mmjax.eval.fid, from weight files), reconstruction metrics
(`python -m mmjax.eval.reconstruction`), visual-token statistics (`python -m
mmjax.eval.tokens`), any-to-any metrics and baselines on the scenes (mmjax.eval.scenes), PNG
grids."""

from mmjax.eval.grid import save_image_grid
from mmjax.eval.image_metrics import psnr, psnr_per_image
from mmjax.eval.reconstruction_quality import image_quality_metrics, reconstruction_metrics
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
from mmjax.eval.ssim import ms_ssim, ssim
from mmjax.eval.visualize import to_rgb

__all__ = [
    "box_iou",
    "box_iou_match",
    "caption_objects",
    "caption_recall_precision",
    "colour_presence",
    "depth_errors",
    "frequent_objects_caption_baseline",
    "image_quality_metrics",
    "majority_class_baseline",
    "mean_depth_baseline",
    "mean_image_baseline",
    "mean_normals_baseline",
    "ms_ssim",
    "normals_angular_error",
    "objects_caption",
    "psnr",
    "psnr_per_image",
    "reconstruction_metrics",
    "save_image_grid",
    "semseg_miou",
    "ssim",
    "to_rgb",
    "visible_objects",
]
