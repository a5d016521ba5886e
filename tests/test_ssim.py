"""SSIM against scikit-image's structural_similarity; MS-SSIM against an independent numpy
re-statement (scipy's Gaussian filter) and, in the slow run, pytorch_msssim."""

import jax
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from mmjax.eval.ssim import (
    MS_SSIM_WEIGHTS,
    mean_ms_ssim,
    mean_ssim,
    ms_ssim,
    ms_ssim_min_size,
    ms_ssim_scales,
    ssim,
)


def _skimage_ssim(a, b, max_value=1.0):
    kwargs = dict(
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=max_value,
        channel_axis=-1,
    )  # fmt: skip
    pairs = zip(a.astype(np.float64), b.astype(np.float64), strict=True)
    return np.array([structural_similarity(x, y, **kwargs) for x, y in pairs])


def _structured(shape, seed):
    """Gradients, a checkerboard, flat areas and a disc: SSIM's hard cases (flat windows make
    the variance terms tiny next to C2)."""
    b, h, w, c = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h - 1, w - 1, 1)
    images = []
    for i in range(b):
        planes = [
            xx,
            ((np.floor(xx * 8) + np.floor(yy * 8)) % 2) * 0.8 + 0.1,
            np.where((xx - 0.5) ** 2 + (yy - 0.4) ** 2 < 0.1, 0.95, 0.2),
            np.full_like(xx, 0.37 + 0.1 * i),
        ]
        images.append(np.stack([planes[(i + k) % len(planes)] for k in range(c)], -1))
    a = np.stack(images)
    noisy = a + 0.05 * rng.standard_normal(a.shape) + 0.03 * np.sin(17 * xx)[None, ..., None]
    return a, np.clip(noisy, 0, 1)


def _random(shape, seed, noise=0.2):
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    return a, np.clip(a + noise * rng.standard_normal(shape), 0, 1)


@pytest.mark.parametrize(
    "shape", [(2, 11, 11, 1), (2, 32, 48, 1), (2, 64, 64, 3), (1, 37, 23, 3), (3, 16, 90, 3)]
)
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_matches_skimage(shape, kind):
    a, b = (_random if kind == "random" else _structured)(shape, seed=sum(shape))
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    ours = np.asarray(ssim(a32, b32))
    assert ours.shape == (shape[0],)
    np.testing.assert_allclose(ours, _skimage_ssim(a, b), rtol=0, atol=1e-5)
    assert mean_ssim(a32, b32) == pytest.approx(float(np.mean(ours)), abs=1e-6)


def test_ssim_max_value_255_matches_skimage():
    a, b = _random((2, 40, 40, 3), seed=3)
    a, b = np.round(a * 255), np.round(b * 255)
    ours = np.asarray(ssim(a.astype(np.float32), b.astype(np.float32), max_value=255.0))
    np.testing.assert_allclose(ours, _skimage_ssim(a, b, 255.0), rtol=0, atol=1e-5)


def test_ssim_and_ms_ssim_identity_and_ordering():
    a, b = _random((2, 176, 176, 3), seed=4, noise=0.05)
    _, c = _random((2, 176, 176, 3), seed=4, noise=0.3)
    np.testing.assert_allclose(np.asarray(ssim(a, a)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ms_ssim(a, a)), 1.0, atol=1e-6)
    # More noise -> lower similarity, for both.
    assert np.all(np.asarray(ssim(a, b)) > np.asarray(ssim(a, c)))
    assert np.all(np.asarray(ms_ssim(a, b)) > np.asarray(ms_ssim(a, c)))


def test_ssim_under_jit_equals_eager():
    a, b = _random((2, 24, 24, 3), seed=5)
    a, b = a.astype(np.float32), b.astype(np.float32)
    jitted = jax.jit(lambda x, y: ssim(x, y))(a, b)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(ssim(a, b)), atol=1e-7)


# ---- MS-SSIM: an independent numpy statement of Wang et al. 2003 ----


def _np_ssim_terms(x, y, max_value):
    """Per-channel (mean SSIM, mean contrast-structure) of one image pair [H, W, C]."""
    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2

    def blur(v):
        out = ndimage.gaussian_filter(v, sigma=(1.5, 1.5, 0), truncate=3.5, mode="reflect")
        return out[5:-5, 5:-5]

    mx, my = blur(x), blur(y)
    vx, vy, vxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    cs = (2 * vxy + c2) / (vx + vy + c2)
    lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    return (lum * cs).mean(axis=(0, 1)), cs.mean(axis=(0, 1))


def _np_ms_ssim(a, b, weights=MS_SSIM_WEIGHTS, max_value=1.0):
    out = []
    for x, y in zip(a.astype(np.float64), b.astype(np.float64), strict=True):
        factors = []
        for s, w in enumerate(weights):
            full, cs = _np_ssim_terms(x, y, max_value)
            factors.append(np.maximum(full if s == len(weights) - 1 else cs, 0) ** w)
            h, wd = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
            x = x[:h, :wd].reshape(h // 2, 2, wd // 2, 2, -1).mean(axis=(1, 3))
            y = y[:h, :wd].reshape(h // 2, 2, wd // 2, 2, -1).mean(axis=(1, 3))
        out.append(np.prod(factors, axis=0).mean())
    return np.array(out)


@pytest.mark.parametrize("shape", [(2, 176, 176, 1), (1, 176, 200, 3), (1, 195, 181, 3)])
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ms_ssim_matches_numpy_statement(shape, kind):
    a, b = (_random if kind == "random" else _structured)(shape, seed=sum(shape))
    ours = np.asarray(ms_ssim(a.astype(np.float32), b.astype(np.float32)))
    np.testing.assert_allclose(ours, _np_ms_ssim(a, b), rtol=0, atol=1e-5)
    assert mean_ms_ssim(a, b) == pytest.approx(float(np.mean(ours)), abs=1e-6)


def test_ms_ssim_small_images_error_names_the_minimum():
    assert ms_ssim_min_size() == 176
    a, b = _random((1, 64, 64, 3), seed=6)
    with pytest.raises(ValueError, match=r"64x64.*at least 176 pixels.*fewer_scales=True"):
        ms_ssim(a, b)
    a, b = _random((1, 175, 300, 3), seed=6)
    with pytest.raises(ValueError, match="at least 176"):
        ms_ssim(a, b)


@pytest.mark.parametrize("side, scales", [(11, 1), (21, 1), (22, 2), (64, 3), (100, 4)])
def test_ms_ssim_fewer_scales_renormalises(side, scales):
    assert ms_ssim_scales(side, side) == scales
    a, b = _random((2, side, side, 3), seed=side, noise=0.05)
    weights = np.array(MS_SSIM_WEIGHTS[:scales]) / sum(MS_SSIM_WEIGHTS[:scales])
    ours = np.asarray(ms_ssim(a, b, fewer_scales=True))
    np.testing.assert_allclose(ours, _np_ms_ssim(a, b, tuple(weights)), rtol=0, atol=1e-5)
    if scales == 1:  # one scale with weight 1 is SSIM itself
        np.testing.assert_allclose(ours, np.asarray(ssim(a, b)), atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    a, b = _random((2, 32, 32, 3), seed=7)
    with pytest.raises(ValueError, match=r"shapes differ"):
        ssim(a, b[:, :31])
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        ssim(a[0], b[0])
    with pytest.raises(ValueError, match=r"10x32 pixels are smaller than the 11-pixel minimum"):
        ssim(a[:, :10], b[:, :10])
    with pytest.raises(ValueError, match=r"second images hold values in .*expected \[0, 1.0\]"):
        ssim(a, b * 2)
    with pytest.raises(ValueError, match=r"first images hold values"):
        ms_ssim(a - 0.5, b, fewer_scales=True)
    with pytest.raises(ValueError, match=r"weights"):
        ms_ssim(a, b, weights=())


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 176, 176, 3), (2, 192, 256, 1)])
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ms_ssim_matches_pytorch_msssim(shape, kind):
    torch = pytest.importorskip("torch")
    pytorch_msssim = pytest.importorskip("pytorch_msssim")

    a, b = (_random if kind == "random" else _structured)(shape, seed=sum(shape))
    ref = pytorch_msssim.ms_ssim(
        torch.from_numpy(a).permute(0, 3, 1, 2), torch.from_numpy(b).permute(0, 3, 1, 2),
        data_range=1.0, size_average=False,
    ).numpy()  # fmt: skip
    ours = np.asarray(ms_ssim(a.astype(np.float32), b.astype(np.float32)))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
