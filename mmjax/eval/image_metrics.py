"""PSNR, the one definition in the package, in its two reductions: over all pixels of a batch
(`psnr`, one MSE) and per image (`psnr_per_image`; its mean is what tokenizer papers report)."""

import numpy as np


def _squared_errors(fn: str, reference, reconstruction) -> np.ndarray:
    ref = np.asarray(reference, np.float64)
    rec = np.asarray(reconstruction, np.float64)
    if ref.shape != rec.shape:
        raise ValueError(f"{fn}: shapes differ, {ref.shape} vs {rec.shape}")
    return (ref - rec) ** 2


def _psnr_from_mse(mse, max_value: float):
    """10 log10(max^2 / MSE) in dB; an MSE of 0 (identical images) gives +inf."""
    mse = np.asarray(mse, np.float64)
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10.0 * np.log10(max_value**2 / np.maximum(mse, 1e-300)))


def psnr(reference, reconstruction, max_value: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels of a batch (one MSE, not a mean
    of per-image PSNRs). Identical inputs give +inf."""
    return float(
        _psnr_from_mse(np.mean(_squared_errors("psnr", reference, reconstruction)), max_value)
    )


def psnr_per_image(reference, reconstruction, max_value: float = 1.0) -> np.ndarray:
    """PSNR in dB of each image of a batch [B, ...] (float64 [B]): one MSE per image over its
    pixels and channels. An identical pair gives +inf."""
    err = _squared_errors("psnr_per_image", reference, reconstruction)
    if err.ndim < 2:
        raise ValueError(f"psnr_per_image: expected a batch [B, ...], got shape {err.shape}")
    flat = err.reshape(err.shape[0], int(np.prod(err.shape[1:])))
    return _psnr_from_mse(flat.mean(axis=1), max_value)
