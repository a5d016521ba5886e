"""PSNR, the one definition in the package, in its two reductions: over all pixels of a batch
(`psnr`, one MSE) and per image (`psnr_per_image`; its mean is what tokenizer papers report).

Images are float values in [0, max_value], or uint8, read as x / 255 * max_value (full scale,
so uint8 against uint8 with max_value=255 is the usual 8-bit PSNR). Other integer and bool
dtypes are refused (a 0/1 mask is not an image), as are float values more than
`RANGE_MARGIN` * max_value outside [0, max_value] (e.g. [0, 255] or [-1, 1] images)."""

import numpy as np

# Unclipped reconstructions may overshoot a little; images in another range miss by far more.
RANGE_MARGIN = 0.1


def _as_image(fn: str, name: str, image, max_value: float) -> np.ndarray:
    """`image` as float64 values in [0, max_value], by the module docstring's rule."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0 * max_value
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(
            f"{fn}: {name} must be float values in [0, {max_value}] or uint8, got dtype {a.dtype}"
        )
    a = a.astype(np.float64)
    margin = RANGE_MARGIN * max_value
    if a.size and (np.nanmin(a) < -margin or np.nanmax(a) > max_value + margin):
        raise ValueError(
            f"{fn}: {name} values must lie in [0, {max_value}] (max_value), got "
            f"[{np.nanmin(a):.4g}, {np.nanmax(a):.4g}]; rescale them or pass max_value"
        )
    return a


def _squared_errors(fn: str, reference, reconstruction, max_value: float) -> np.ndarray:
    ref = _as_image(fn, "reference", reference, max_value)
    rec = _as_image(fn, "reconstruction", reconstruction, max_value)
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
        _psnr_from_mse(
            np.mean(_squared_errors("psnr", reference, reconstruction, max_value)), max_value
        )
    )


def psnr_per_image(reference, reconstruction, max_value: float = 1.0) -> np.ndarray:
    """PSNR in dB of each image of a batch [B, ...] (float64 [B]): one MSE per image over its
    pixels and channels. An identical pair gives +inf."""
    err = _squared_errors("psnr_per_image", reference, reconstruction, max_value)
    if err.ndim < 2:
        raise ValueError(f"psnr_per_image: expected a batch [B, ...], got shape {err.shape}")
    flat = err.reshape(err.shape[0], int(np.prod(err.shape[1:])))
    return _psnr_from_mse(flat.mean(axis=1), max_value)
