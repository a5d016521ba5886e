"""Image reconstruction metrics."""

import numpy as np


def psnr(reference, reconstruction, max_value: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels of a batch (one MSE, not a mean
    of per-image PSNRs). Identical inputs give +inf."""
    ref = np.asarray(reference, np.float64)
    rec = np.asarray(reconstruction, np.float64)
    if ref.shape != rec.shape:
        raise ValueError(f"psnr: shapes differ, {ref.shape} vs {rec.shape}")
    mse = np.mean((ref - rec) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(max_value**2 / mse))
