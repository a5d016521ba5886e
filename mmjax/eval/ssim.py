"""SSIM (Wang et al. 2004) and MS-SSIM (Wang et al. 2003) on batches of images, in JAX.

Images are float ``[B, H, W, C]`` in ``[0, max_value]`` (``C`` = 1 for gray); both functions
are jit-able and return one value per image (``[B]``); ``mean_ssim`` / ``mean_ms_ssim`` give
the batch mean as a float.

SSIM is the definition papers report: an 11x11 Gaussian window (sigma 1.5, normalised), K1 =
0.01, K2 = 0.03, population (not sample) covariances, the SSIM map over the 'valid' window
positions only, averaged over positions and then over channels. It equals scikit-image's
``structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=max_value, channel_axis=-1)``.

MS-SSIM uses the same window at 5 scales with weights ``MS_SSIM_WEIGHTS``, 2x2 average pooling
between scales (an odd trailing row/column is dropped), the contrast-structure term at the
first 4 scales and the full SSIM (luminance x contrast-structure) at the last; negative terms
are clipped to 0 before the weighted product (as TensorFlow and pytorch_msssim do), per channel,
then averaged over channels. The coarsest scale must still hold the 11-pixel window, so the
shorter side must be at least ``ms_ssim_min_size()`` = 11 * 2**4 = 176 pixels. Smaller images
raise a ValueError unless ``fewer_scales=True``: then the most scales that fit are used, with
the leading weights renormalised to sum to 1 (one scale is plain SSIM).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """The normalised 1D Gaussian of `size` taps centred on the middle one (float64)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _filter_valid(x: jax.Array, window: np.ndarray) -> jax.Array:
    """Separable 'valid' filtering over axes 1 and 2 of [B, H, W, K] as a sum of shifted
    slices: exact float32 arithmetic on every backend (no reduced-precision matmul)."""
    n = len(window)
    h, w = x.shape[1] - n + 1, x.shape[2] - n + 1
    x = sum(float(window[k]) * x[:, k : k + h] for k in range(n))
    return sum(float(window[k]) * x[:, :, k : k + w] for k in range(n))


def _as_images(name: str, x, y, max_value: float, min_size: int):
    """Both image batches as arrays, after checking shapes and (for concrete values, not
    under an outer jit) the [0, max_value] range."""
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    y = y if isinstance(y, jax.Array) else np.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"{name}: image shapes differ, {x.shape} vs {y.shape}")
    if x.ndim != 4:
        raise ValueError(f"{name}: expected images [B, H, W, C], got shape {x.shape}")
    if min(x.shape[1:3]) < min_size:
        raise ValueError(
            f"{name}: images of {x.shape[1]}x{x.shape[2]} pixels are smaller than the "
            f"{min_size}-pixel minimum"
        )
    for label, v in (("first", x), ("second", y)):
        if isinstance(v, jax.core.Tracer) or v.size == 0:
            continue
        lo, hi = float(v.min()), float(v.max())
        if not (lo >= 0 and hi <= max_value * (1 + 1e-6)):
            raise ValueError(
                f"{name}: {label} images hold values in [{lo:.4g}, {hi:.4g}], expected "
                f"[0, {max_value}] (max_value={max_value}; clip reconstructions first)"
            )
    return x, y


def _ssim_terms(x: jax.Array, y: jax.Array, max_value: float) -> tuple[jax.Array, jax.Array]:
    """Per-image, per-channel mean SSIM and mean contrast-structure, both [B, C]."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    y = y.astype(x.dtype)
    c1 = (K1 * max_value) ** 2
    c2 = (K2 * max_value) ** 2
    # (Co)variances are shift-invariant: centring each image on its own mean first keeps
    # E[x^2] - E[x]^2 from cancelling catastrophically in float32.
    x_off = jnp.mean(x, axis=(1, 2), keepdims=True)
    y_off = jnp.mean(y, axis=(1, 2), keepdims=True)
    xc, yc = x - x_off, y - y_off
    stacked = jnp.concatenate([xc, yc, xc * xc, yc * yc, xc * yc], axis=-1)
    mx, my, exx, eyy, exy = jnp.split(_filter_valid(stacked, gaussian_window()), 5, axis=-1)
    vx = exx - mx * mx
    vy = eyy - my * my
    vxy = exy - mx * my
    mx, my = mx + x_off, my + y_off
    cs_map = (2 * vxy + c2) / (vx + vy + c2)
    lum_map = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return jnp.mean(lum_map * cs_map, axis=(1, 2)), jnp.mean(cs_map, axis=(1, 2))


def ssim(x, y, max_value: float = 1.0) -> jax.Array:
    """SSIM of each image pair, [B]: the Gaussian-window SSIM map over valid positions,
    averaged over positions and channels. Images [B, H, W, C], H and W at least 11."""
    x, y = _as_images("ssim", x, y, max_value, WINDOW_SIZE)
    return _ssim(x, y, float(max_value))


@functools.partial(jax.jit, static_argnames=("max_value",))
def _ssim(x, y, max_value):
    return jnp.mean(_ssim_terms(x, y, max_value)[0], axis=-1)


def ms_ssim_min_size(scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Shortest image side that holds the 11-pixel window at the coarsest of `scales`."""
    return WINDOW_SIZE * 2 ** (scales - 1)


def ms_ssim_scales(height: int, width: int) -> int:
    """How many scales (at most 5) an image of height x width supports."""
    n = 0
    side = min(height, width)
    while n < len(MS_SSIM_WEIGHTS) and side >= WINDOW_SIZE:
        n += 1
        side //= 2
    return n


def _avg_pool2(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def ms_ssim(
    x,
    y,
    max_value: float = 1.0,
    weights=MS_SSIM_WEIGHTS,
    fewer_scales: bool = False,
) -> jax.Array:
    """MS-SSIM of each image pair, [B]. Needs a shorter side of at least
    ms_ssim_min_size(len(weights)) pixels (176 for the 5 standard scales); with
    `fewer_scales=True` smaller images (down to 11 pixels) use the scales that fit and the
    leading weights renormalised to sum to 1."""
    weights = tuple(float(w) for w in weights)
    if not weights or min(weights) < 0:
        raise ValueError(f"ms_ssim: weights must be one or more non-negative floats, got {weights}")
    x, y = _as_images("ms_ssim", x, y, max_value, WINDOW_SIZE)
    h, w = x.shape[1:3]
    scales = min(len(weights), ms_ssim_scales(h, w))
    if scales < len(weights):
        if not fewer_scales:
            raise ValueError(
                f"ms_ssim: images of {h}x{w} pixels are too small for {len(weights)} scales "
                f"with an {WINDOW_SIZE}-pixel window: the shorter side must be at least "
                f"{ms_ssim_min_size(len(weights))} pixels (or pass fewer_scales=True to use "
                f"{scales} scale(s) with renormalised weights)"
            )
        total = sum(weights[:scales])
        weights = tuple(wt / total for wt in weights[:scales])
    return _ms_ssim(x, y, float(max_value), weights)


@functools.partial(jax.jit, static_argnames=("max_value", "weights"))
def _ms_ssim(x, y, max_value, weights):
    terms = []
    for s in range(len(weights)):
        ssim_c, cs_c = _ssim_terms(x, y, max_value)
        last = s == len(weights) - 1
        terms.append(ssim_c if last else cs_c)
        if not last:
            x, y = _avg_pool2(x), _avg_pool2(y)
    stacked = jnp.maximum(jnp.stack(terms), 0.0)  # [S, B, C]
    per_channel = jnp.prod(stacked ** jnp.asarray(weights)[:, None, None], axis=0)
    return jnp.mean(per_channel, axis=-1)


def mean_ssim(x, y, max_value: float = 1.0) -> float:
    """SSIM averaged over the batch."""
    return float(jnp.mean(ssim(x, y, max_value)))


def mean_ms_ssim(x, y, max_value: float = 1.0, fewer_scales: bool = False) -> float:
    """MS-SSIM averaged over the batch."""
    return float(jnp.mean(ms_ssim(x, y, max_value, fewer_scales=fewer_scales)))
