"""Evaluation: image metrics and PNG grids (later: SSIM, Frechet distance, token stats)."""

from mmjax.eval.grid import save_image_grid
from mmjax.eval.image_metrics import psnr

__all__ = ["psnr", "save_image_grid"]
