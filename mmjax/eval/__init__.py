"""Evaluation: reconstruction metrics, PNG grids (later: SSIM, Frechet distance, token stats)."""

from mmjax.eval.grid import save_image_grid
from mmjax.eval.image_metrics import psnr
from mmjax.eval.reconstruction import reconstruction_metrics
from mmjax.eval.visualize import to_rgb

__all__ = ["psnr", "reconstruction_metrics", "save_image_grid", "to_rgb"]
