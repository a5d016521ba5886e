"""`python -m mmjax.eval.reconstruction` with untrained tokenizer bundles (32 px, 4 x 4 tokens)
on the scenes and on a folder of PNGs: the JSON equals an independent recomputation (decode
through `Tokenizer`, numpy PSNR and SSIM, numpy token histograms), LPIPS and rFID from random
weights equal direct calls, streaming equals one batch, depth tokenizers get their dense
metrics, and bad input names the thing that is wrong."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmjax.data import ScenesSource, write_records
from mmjax.data.resize import center_box, center_crop_resize, resize_box
from mmjax.data.splits import split_indices
from mmjax.eval.accumulate import GaussianMoments, ImageQualityAccumulator, TokenHistogram
from mmjax.eval.fid import FidInception, feature_statistics, rfid_from_features
from mmjax.eval.image_metrics import psnr, psnr_per_image
from mmjax.eval.inception import variable_shapes
from mmjax.eval.lpips import LPIPS
from mmjax.eval.reconstruction import main
from mmjax.eval.reconstruction_quality import (
    METRIC_KEYS,
    image_quality_metrics,
    reconstruction_metrics,
)
from mmjax.eval.ssim import ms_ssim
from mmjax.tokenizers import Tokenizer
from tests.references import np_usage

R = 32
MODEL = {"type": "conv", "size": "tiny", "channels": 8, "channel_mult": [1, 1, 2, 2]}
QUANT = {"type": "fsq", "levels": [5, 5, 4, 4]}
PNG_SIZES = [(40, 48), (32, 32), (64, 36), (50, 50), (33, 70), (48, 40), (36, 36)]


# ---------------------------------------------------------------- independent references
def np_psnr_mean(a, b):
    """Mean over images of 10 log10(1 / MSE_image)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(
        np.mean([10 * np.log10(1.0 / np.mean((x - y) ** 2)) for x, y in zip(a, b, strict=True)])
    )


def np_ssim_mean(a, b, size=11, sigma=1.5):
    """Mean over images of Wang et al.'s SSIM: Gaussian window, valid positions, population
    (co)variances, per channel then averaged; brute force over windows in float64."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    w = np.outer(g, g) / np.sum(np.outer(g, g))
    c1, c2 = 0.01**2, 0.03**2
    out = []
    for x_img, y_img in zip(np.asarray(a, np.float64), np.asarray(b, np.float64), strict=True):
        xs = np.lib.stride_tricks.sliding_window_view(x_img, (size, size), axis=(0, 1))
        ys = np.lib.stride_tricks.sliding_window_view(y_img, (size, size), axis=(0, 1))
        mx, my = np.sum(xs * w, axis=(-2, -1)), np.sum(ys * w, axis=(-2, -1))
        vx = np.sum(xs**2 * w, axis=(-2, -1)) - mx**2
        vy = np.sum(ys**2 * w, axis=(-2, -1)) - my**2
        cxy = np.sum(xs * ys * w, axis=(-2, -1)) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        out.append(s.mean())
    return float(np.mean(out))


def roundtrip(tok, images):
    """(tokens, reconstructions) of all the images in one encode/decode call."""
    tokens = tok.encode(np.asarray(images, np.float32))
    return np.asarray(tokens), np.asarray(tok.decode(tokens))


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def bundles(untrained_tokenizers):
    return untrained_tokenizers(("rgb", "depth"), MODEL, QUANT, R)


@pytest.fixture(scope="module")
def rgb_tok(bundles):
    return Tokenizer.load(bundles["rgb"])


@pytest.fixture(scope="module")
def weights(tmp_path_factory, random_lpips_weights):
    """Random-weight LPIPS (alex) and FID Inception .npz files in their layouts."""
    root = tmp_path_factory.mktemp("weights")
    rng = np.random.default_rng(0)
    fid_arrays = {}
    for key, shape in variable_shapes().items():
        leaf = key.rsplit("/", 1)[-1]
        if leaf == "kernel":
            fid_arrays[key] = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        else:  # BatchNorm: unit variance and scale, zero mean and bias
            fid_arrays[key] = (np.ones if leaf in ("var", "scale") else np.zeros)(shape)
    np.savez(root / "fid.npz", **{k: v.astype(np.float32) for k, v in fid_arrays.items()})
    return {"lpips": random_lpips_weights, "fid": str(root / "fid.npz")}


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    """PNGs of several sizes (smooth gradients plus noise), in a nested folder; and their
    eval-preprocessed [R, R, 3] images in the source's (sorted) order."""
    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(1)
    names = []
    for i, (h, w) in enumerate(PNG_SIZES):
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([yy, xx, 0.5 * (yy + xx)], -1) * rng.uniform(0.3, 1.0, 3)
        img = np.clip(base + 0.1 * rng.standard_normal((h, w, 3)), 0, 1)
        name = f"{'sub/' if i % 2 else ''}img_{i}.png"
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(root / name)
        names.append(name)
    images = [
        center_crop_resize(np.asarray(Image.open(root / n).convert("RGB")) / 255.0, R)
        for n in sorted(names)
    ]
    return str(root), np.stack(images).astype(np.float32)


def run(argv, tmp_path, name="out.json"):
    out = tmp_path / name
    result = main([*argv, "--json", str(out), "--no-progress"])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    return saved


# --------------------------------------------------------------------------------- tests
def test_scenes_equal_an_independent_recomputation(bundles, rgb_tok, tmp_path, capsys):
    n = 10
    out = run(["--tokenizer", bundles["rgb"], "--num", str(n), "--batch-size", "4"], tmp_path)
    printed = capsys.readouterr().out
    images = np.stack([ScenesSource("validation", R, n)[i]["rgb"] for i in range(n)])
    tokens, recon = roundtrip(rgb_tok, images)
    assert set(METRIC_KEYS) <= set(out) and out["num_images"] == n
    assert out["psnr"] == pytest.approx(np_psnr_mean(images, recon), rel=1e-5)
    assert out["ssim"] == pytest.approx(np_ssim_mean(images, recon), abs=2e-5)
    usage, perplexity = np_usage(tokens, rgb_tok.codebook_size)
    assert (out["usage"], out["perplexity"]) == pytest.approx((usage, perplexity), rel=1e-9)
    assert 0 < out["usage"] <= 1 and 1 <= out["perplexity"] <= rgb_tok.codebook_size
    # absent metrics are null, and the output says why
    assert out["lpips"] is None and out["rfid"] is None and out["ms_ssim"] is None
    assert "--lpips-weights" in out["notes"]["lpips"] and "--fid-weights" in out["notes"]["rfid"]
    assert "176" in out["notes"]["ms_ssim"]
    assert out["source"] == {"source": "scenes", "split": "validation", "resolution": R}
    for key in ("psnr", "ssim", "usage", "perplexity", "no LPIPS weights", "per-image PSNR"):
        assert key in printed


def test_streaming_equals_one_batch(bundles, tmp_path):
    argv = ["--tokenizer", bundles["rgb"], "--num", "9", "--split", "train"]
    streamed = run([*argv, "--batch-size", "2"], tmp_path, "a.json")
    whole = run([*argv, "--batch-size", "16"], tmp_path, "b.json")
    for key in ("psnr", "usage", "perplexity", "num_images"):
        assert streamed[key] == pytest.approx(whole[key], rel=1e-6), key
    assert streamed["ssim"] == pytest.approx(whole["ssim"], abs=1e-6)


def test_image_folder_with_lpips(bundles, rgb_tok, png_folder, weights, tmp_path):
    folder, images = png_folder
    argv = ["--tokenizer", bundles["rgb"], "--source", "image_folder", "--path", folder]
    out = run([*argv, "--lpips-weights", weights["lpips"], "--batch-size", "3"], tmp_path)
    tokens, recon = roundtrip(rgb_tok, images)
    lpips = LPIPS.load(weights["lpips"])
    assert out["num_images"] == len(PNG_SIZES) and out["source"]["path"] == folder
    assert out["psnr"] == pytest.approx(np_psnr_mean(images, recon), rel=1e-5)
    assert out["ssim"] == pytest.approx(np_ssim_mean(images, recon), abs=2e-5)
    usage, perplexity = np_usage(tokens, rgb_tok.codebook_size)
    assert (out["usage"], out["perplexity"]) == pytest.approx((usage, perplexity), rel=1e-9)
    assert out["lpips"] == pytest.approx(float(np.mean(lpips(images, recon))), rel=1e-5)
    assert out["lpips"] > 0 and out["rfid"] is None
    # the trainer's one-batch function gives the same numbers
    one = image_quality_metrics(images, recon, lpips=lpips)
    assert one["rfid"] is None and one["ms_ssim"] is None and one["num_images"] == len(images)
    for key in ("psnr", "ssim", "lpips"):
        assert one[key] == pytest.approx(out[key], rel=1e-5, abs=1e-6), key


def test_streamed_inception_statistics_equal_direct_ones(png_folder, weights):
    """rFID's inputs without its 2048 x 2048 sqrtm (a minute on 2 cores; the slow test
    below runs it): the streamed feature moments equal feature_statistics (np.cov) of all
    the features at once."""
    images = png_folder[1][:4]
    fid = FidInception.load(weights["fid"], batch_size=2)  # one compiled shape throughout
    acc = ImageQualityAccumulator(fid=fid)
    recon = images[::-1].copy()
    for k in (0, 2):
        acc.update(images[k : k + 2], recon[k : k + 2])
    for moments, x in ((acc.ref_moments, images), (acc.rec_moments, recon)):
        mu, sigma = moments.statistics()
        mu_ref, sigma_ref = feature_statistics(fid.features(x))
        np.testing.assert_allclose(mu, mu_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_rfid_equals_a_direct_call(bundles, rgb_tok, png_folder, weights, tmp_path):
    folder, images = png_folder
    argv = ["--tokenizer", bundles["rgb"], "--source", "image_folder", "--path", folder]
    out = run([*argv, "--fid-weights", weights["fid"], "--batch-size", "3"], tmp_path)
    _, recon = roundtrip(rgb_tok, images)
    fid = FidInception.load(weights["fid"])
    direct = rfid_from_features(fid.features(images), fid.features(recon))
    assert out["rfid"] == pytest.approx(direct, rel=1e-3) and out["rfid"] > 0
    assert out["lpips"] is None


def test_depth_tokenizer_reports_its_dense_metrics(bundles, tmp_path, capsys):
    """Rendered at 40 px: resized to the tokenizer's 32 by the nearest sample (no invented
    depths), centre-cropped."""
    n, b, render = 6, 4, 40
    argv = ["--tokenizer", bundles["depth"], "--num", str(n), "--resolution", str(render)]
    out = run([*argv, "--batch-size", str(b)], tmp_path)
    tok = Tokenizer.load(bundles["depth"])
    box = center_box(render, render, R)
    depth = np.stack(
        [resize_box(ScenesSource("validation", render, n)[i]["depth"], box, R, nearest=True)
         for i in range(n)]
    )  # fmt: skip
    tokens, recon = roundtrip(tok, depth)
    # batch metrics, averaged weighted by batch size
    parts = [reconstruction_metrics("depth", depth[k : k + b], recon[k : k + b]) for k in (0, b)]
    for key in ("psnr", "abs_err"):
        expected = (parts[0][key] * b + parts[1][key] * (n - b)) / n
        assert out[key] == pytest.approx(expected, rel=1e-4), key
    assert (out["usage"], out["perplexity"]) == pytest.approx(np_usage(tokens, 400), rel=1e-9)
    for key in ("ssim", "ms_ssim", "lpips", "rfid"):
        assert out[key] is None and out["notes"][key] == "rgb tokenizers only"
    assert "abs_err" in capsys.readouterr().out


def test_array_record_held_out_part(bundles, rgb_tok, tmp_path):
    """--validation-fraction evaluates the examples training holds out (the hash split)."""
    images = np.random.default_rng(3).random((12, R, R, 3)).astype(np.float32)
    files = write_records([{"rgb": x} for x in images], str(tmp_path / "rec"), "val")
    argv = ["--tokenizer", bundles["rgb"], "--source", "array_record", "--paths", *files]
    out = run([*argv, "--validation-fraction", "0.5", "--batch-size", "4"], tmp_path)
    held_out = images[split_indices(len(images), "validation", 0.5)]
    assert 0 < len(held_out) < len(images) and out["num_images"] == len(held_out)
    tokens, recon = roundtrip(rgb_tok, held_out)
    assert out["psnr"] == pytest.approx(np_psnr_mean(held_out, recon), rel=1e-5)
    assert out["ssim"] == pytest.approx(np_ssim_mean(held_out, recon), abs=2e-5)
    assert out["usage"] == pytest.approx(np_usage(tokens, rgb_tok.codebook_size)[0], rel=1e-9)
    assert out["source"]["part"] == "validation" and out["source"]["paths"] == files


def test_accumulators_against_direct_formulas():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((23, 5)) * [1, 10, 0.1, 3, 1] + 100.0
    moments = GaussianMoments()
    for chunk in np.array_split(feats, [1, 4, 13]):
        moments.update(chunk)
    mu, sigma = moments.statistics()
    mu_ref, sigma_ref = feature_statistics(feats)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-12)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-9, atol=1e-12)
    tokens = rng.integers(0, 50, (40, 4, 4))
    dense, sparse = TokenHistogram(64), TokenHistogram(2**30)  # dense / dict counts
    for hist in (dense, sparse):
        for chunk in np.array_split(tokens, 3):
            hist.update(chunk)
        assert (hist.usage() * hist.codebook_size) == len(np.unique(tokens))
    assert dense.perplexity() == pytest.approx(np_usage(tokens, 64)[1], rel=1e-12)
    assert sparse.perplexity() == pytest.approx(dense.perplexity(), rel=1e-12)
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        dense.update(np.array([64]))
    # MS-SSIM from 176 px on, streamed in batches of 2 and 1
    a, b = rng.random((2, 3, 176, 176, 3), dtype=np.float32)
    acc = ImageQualityAccumulator()
    acc.update(a[:2], b[:2])
    acc.update(a[2:], b[2:])
    got = acc.result()
    assert got["ms_ssim"] == pytest.approx(float(np.mean(ms_ssim(a, b))), rel=1e-6)
    assert got["psnr"] == pytest.approx(np_psnr_mean(a, b), rel=1e-9)
    # per-image PSNR of one image is the all-pixel PSNR; identical images give inf
    a, b = rng.random((3, 8, 8, 3)), rng.random((3, 8, 8, 3))
    np.testing.assert_allclose(
        psnr_per_image(a, b), [psnr(x, y) for x, y in zip(a, b, strict=True)]
    )
    assert psnr_per_image(a, a).tolist() == [np.inf] * 3


def test_errors_name_the_thing(bundles, png_folder, weights, tmp_path, capsys):
    def error(argv):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        return capsys.readouterr().err

    not_bundle = tmp_path / "not_a_bundle"
    not_bundle.mkdir()
    assert "tokenizer.json" in error(["--tokenizer", str(not_bundle)])
    folder, _ = png_folder
    err = error(["--tokenizer", bundles["depth"], "--source", "image_folder", "--path", folder])
    assert "'depth'" in err and "rgb" in err
    missing = str(tmp_path / "nope.npz")
    err = error(["--tokenizer", bundles["rgb"], "--lpips-weights", missing])
    assert "--lpips-weights" in err and missing in err
    err = error(["--tokenizer", bundles["rgb"], "--fid-weights", weights["lpips"]])
    assert weights["lpips"] in err  # an LPIPS file is no Inception
    assert "--path" in error(["--tokenizer", bundles["rgb"], "--source", "image_folder"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in error(
        ["--tokenizer", bundles["rgb"], "--source", "image_folder", "--path", str(empty)]
    )


def test_module_runs_with_help():
    proc = subprocess.run(
        [sys.executable, "-m", "mmjax.eval.reconstruction", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--tokenizer", "--source", "--num", "--lpips-weights", "--fid-weights", "--json"):
        assert flag in proc.stdout
    assert "RuntimeWarning" not in proc.stderr


def test_num_tokens_on_a_2d_tokenizer_is_named(bundles, capsys):
    with pytest.raises(SystemExit):
        main(["--tokenizer", bundles["rgb"], "--num", "2", "--num-tokens", "4", "--no-progress"])
    assert "num_tokens=4 applies to 1D" in capsys.readouterr().err
