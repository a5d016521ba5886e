"""rFID: the Frechet distance against closed forms and an eigen-decomposition, the weights
file's errors, the Flax FID Inception's batch independence and resize; and (slow, needs torch)
parity with pytorch-fid itself on random weights: pool3 features and the Frechet distance."""

import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

from mmjax.eval import fid
from mmjax.eval.inception import bilinear_matrix, variable_shapes


def random_fid_variables(seed: int = 0) -> dict:
    """{npz key: array}: He-normal kernels, BN near identity with some spread, so that
    activations stay O(1) through the 94 conv layers."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in variable_shapes().items():
        leaf = key.rsplit("/", 1)[1]
        if leaf == "kernel":
            fan_in = shape[0] * shape[1] * shape[2]
            v = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif leaf == "scale":
            v = rng.uniform(0.8, 1.2, shape)
        elif leaf in ("bias", "mean"):
            v = rng.normal(0.0, 0.05, shape)
        else:  # var
            v = rng.uniform(0.8, 1.2, shape)
        out[key] = v.astype(np.float32)
    return out


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / "inception_fid.npz"
    arrays = random_fid_variables()
    np.savez(path, **arrays)
    return str(path), arrays


def _images(rng, n, h, w):
    """Smooth images in [0, 1]: upsampled low-resolution noise plus a gradient."""
    low = rng.random((n, 8, 8, 3))
    x = np.stack([np.kron(im, np.ones((h // 8 + 1, w // 8 + 1, 1)))[:h, :w] for im in low])
    ramp = np.linspace(0.0, 1.0, w)[None, None, :, None]
    return np.clip(0.7 * x + 0.3 * ramp, 0.0, 1.0).astype(np.float32)


# Frechet distance -------------------------------------------------------------------------


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _fd_eigh(mu1, s1, mu2, s2):
    """Independent: Tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), all symmetric."""
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(w)) @ v.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    v1, v2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = fid.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert isinstance(got, float)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_distance_full_covariances_equal_and_symmetric():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    s1, s2 = _spd(rng, 32), _spd(rng, 32)
    d12 = fid.frechet_distance(mu1, s1, mu2, s2)
    np.testing.assert_allclose(d12, _fd_eigh(mu1, s1, mu2, s2), rtol=1e-9)
    np.testing.assert_allclose(fid.frechet_distance(mu2, s2, mu1, s1), d12, rtol=1e-9)
    assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * np.trace(s1)
    with pytest.raises(ValueError, match="means of shapes"):
        fid.frechet_distance(mu1, s1, mu2[:5], s2)
    with pytest.raises(ValueError, match="covariances of shapes"):
        fid.frechet_distance(mu1, s1, mu2, s2[:5, :5])


def test_rfid_from_features_matches_moments():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(300, 8)).astype(np.float32)
    b = (rng.normal(size=(200, 8)) * 1.5 + 0.3).astype(np.float32)
    mu_a, sa = a.astype(np.float64).mean(0), np.cov(a.astype(np.float64), rowvar=False)
    mu_b, sb = b.astype(np.float64).mean(0), np.cov(b.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(fid.rfid_from_features(a, b), _fd_eigh(mu_a, sa, mu_b, sb), 1e-9)
    assert abs(fid.rfid_from_features(a, a)) < 1e-9
    with pytest.raises(ValueError, match="N >= 2"):
        fid.feature_statistics(a[:1])


# The weights file ------------------------------------------------------------------------


def test_weights_file_errors_name_the_file_and_tensor(weights_file, tmp_path):
    arrays = weights_file[1]
    with pytest.raises(FileNotFoundError, match=r"no file .*nothere\.npz.*convert"):
        fid.FidInception.load(str(tmp_path / "nothere.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"bad\.npz: not an \.npz"):
        fid.load_variables(str(bad))
    key = "params/Mixed_6c/branch7x7dbl_3/conv/kernel"
    np.savez(bad, **{k: v for k, v in arrays.items() if k != key})
    with pytest.raises(ValueError, match=f"bad.npz: tensor '{key}' is missing"):
        fid.load_variables(str(bad))
    np.savez(bad, **{**arrays, key: arrays[key][:, :, :3]})
    with pytest.raises(ValueError, match=rf"tensor '{key}' has shape \(1, 7, 3, 160\)"):
        fid.load_variables(str(bad))
    np.savez(bad, **{**arrays, "params/fc/kernel": np.zeros((2048, 1008), np.float32)})
    with pytest.raises(ValueError, match=r"unexpected tensors.*fc/kernel"):
        fid.load_variables(str(bad))


# The network ------------------------------------------------------------------------------


def test_resize_matches_jax_bilinear_without_antialias():
    rng = np.random.default_rng(3)
    for h, w in [(64, 48), (512, 300), (299, 299)]:
        x = rng.random((1, h, w, 3)).astype(np.float32)
        ours = np.einsum("oh,bhwc->bowc", bilinear_matrix(h, 299), x)
        ours = np.einsum("pw,bowc->bopc", bilinear_matrix(w, 299), ours)
        ref = jax.image.resize(x, (1, 299, 299, 3), "linear", antialias=False)
        # Both compute source coordinates in float32: up to ulp(512) ~ 6e-5 apart in the
        # interpolation weight, times a pixel difference below 1.
        np.testing.assert_allclose(ours, np.asarray(ref), atol=3e-5)


def test_features_independent_of_batch_and_padding(weights_file):
    """[a, b, c] in batches of 2 (c with a zero pad) and [c, a, b] (b padded) give each image
    the same features; they are finite, float32, and differ between images."""
    model = fid.FidInception.load(weights_file[0], batch_size=2)
    x = _images(np.random.default_rng(4), 3, 40, 56)
    f = model.features(x)
    g = model.features(x[[2, 0, 1]])
    assert f.shape == (3, 2048) and f.dtype == np.float32 and np.isfinite(f).all()
    scale = np.abs(f).max()
    assert scale > 1e-3
    np.testing.assert_allclose(g, f[[2, 0, 1]], atol=1e-5 * scale)
    assert np.abs(f[0] - f[1]).max() > 1e-2 * scale  # distinct images, distinct features
    with pytest.raises(ValueError, match=r"values must be finite and in \[0, 1\]"):
        model.features(x * 2)
    with pytest.raises(ValueError, match="uint8"):
        model.features((x * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        model.features(x[..., :2])


# Parity with pytorch-fid (slow: needs torch) -----------------------------------------------


def _torch_fid_inception(seed: int = 0):
    """(pytorch_fid InceptionV3([3]) in eval mode, the Inception3 state dict it was built from):
    random weights, no download. The state dict is a torchvision Inception3 (1008 classes, no
    aux head, the .pth file's layout) with He-normal kernels, random BN affine, and BN running
    statistics set near the batch statistics of real activations (perturbed), so that every
    layer works on O(1) values."""
    import torch
    import torchvision
    from pytorch_fid import inception as pfi

    torch.manual_seed(seed)
    net = torchvision.models.inception_v3(
        weights=None, aux_logits=False, num_classes=1008, init_weights=False
    )
    hooks = []
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.7, 1.3)
                m.bias.normal_(0.0, 0.2)

                def calibrate(mod, inputs):
                    x = inputs[0]
                    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
                    mod.running_mean.copy_(mean + 0.2 * var.sqrt() * torch.randn_like(mean))
                    mod.running_var.copy_(var * torch.empty_like(var).uniform_(0.6, 1.6))

                hooks.append(m.register_forward_pre_hook(calibrate))
        net.eval()
        calib = torch.from_numpy(_images(np.random.default_rng(99), 4, 299, 299))
        net(calib.permute(0, 3, 1, 2) * 2 - 1)
    for h in hooks:
        h.remove()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    original = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    finally:
        pfi.load_state_dict_from_url = original
    return model, state


@pytest.fixture(scope="module")
def torch_parity(tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    model, state = _torch_fid_inception()
    root = tmp_path_factory.mktemp("fid_parity")
    pth, npz = root / "pt_inception.pth", root / "inception_fid.npz"
    torch.save(state, pth)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "mmjax.eval.fid", "convert", "--pth", str(pth), "--out", str(npz)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return model, state, str(npz)


def _torch_features(model, images):
    import torch

    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        return model(x)[0][:, :, 0, 0].numpy()


@pytest.mark.slow
def test_pool3_features_match_pytorch_fid(torch_parity):
    model, _, npz = torch_parity
    ours = fid.FidInception.load(npz, batch_size=3)
    rng = np.random.default_rng(5)
    for h, w in [(64, 64), (299, 299), (330, 256)]:
        x = _images(rng, 3, h, w)
        ref, got = _torch_features(model, x), ours.features(x)
        scale = np.abs(ref).max()
        assert scale > 0.1 and ref.std() > 1e-2 * scale, (h, w, scale)  # a non-trivial check
        err = np.abs(got - ref).max() / scale
        print(f"pool3 parity {h}x{w}: max abs diff / max |feature| = {err:.2e} (scale {scale:.3g})")
        assert err <= 1e-4, f"{h}x{w}: max abs diff {err:.2e} of the feature scale"


@pytest.mark.slow
def test_frechet_distance_matches_pytorch_fid(torch_parity):
    from pytorch_fid.fid_score import calculate_frechet_distance

    model = torch_parity[0]
    rng = np.random.default_rng(6)
    # Full-rank statistics (N > D), and the rank-deficient ones of four pool3 features (on
    # their first 256 dimensions: a 2048-d sqrtm takes ~30 s on 2 cores).
    a, b = rng.normal(size=(400, 64)), rng.normal(size=(300, 64)) @ _spd(rng, 64)
    fx = _torch_features(model, _images(rng, 4, 64, 64))[:, :256].astype(np.float64)
    fy = _torch_features(model, _images(rng, 4, 64, 64))[:, :256].astype(np.float64)
    for p, q in [(a, b), (fx, fy)]:
        stats = [np.mean(p, 0), np.cov(p, rowvar=False), np.mean(q, 0), np.cov(q, rowvar=False)]
        with warnings.catch_warnings():  # pytorch-fid's sqrtm(..., disp=False), scipy>=1.16
            warnings.simplefilter("ignore", DeprecationWarning)
            expected = calculate_frechet_distance(*stats)
        assert expected > 0.01 * (np.trace(stats[1]) + np.trace(stats[3]))
        np.testing.assert_allclose(fid.frechet_distance(*stats), expected, rtol=1e-6)
        np.testing.assert_allclose(fid.rfid_from_features(p, q), expected, rtol=1e-6)


@pytest.mark.slow
def test_convert_reads_both_pytorch_layouts(torch_parity, tmp_path):
    """The wrapper's own state dict (blocks.* keys) converts to the same arrays as the .pth
    (Inception3 keys); a file missing a tensor names it."""
    import torch

    model, state, npz = torch_parity
    wrapper = fid.convert_state_dict(model.state_dict())
    with np.load(npz) as stored:
        assert set(stored.files) == set(wrapper)
        for k in stored.files:
            np.testing.assert_array_equal(stored[k], wrapper[k], err_msg=k)
    broken = dict(state)
    del broken["Mixed_7b.branch3x3_2a.bn.running_var"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(
        ValueError, match=r"broken\.pth: tensor 'Mixed_7b.branch3x3_2a.bn.running_var'"
    ):
        fid.convert(str(tmp_path / "broken.pth"), str(tmp_path / "x.npz"))
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.slow
def test_resize_matches_torch_interpolate():
    import torch
    import torch.nn.functional as F

    from mmjax.eval.inception import preprocess

    rng = np.random.default_rng(7)
    for h, w in [(64, 48), (512, 300), (299, 299)]:
        x = rng.random((2, h, w, 3)).astype(np.float32)
        t = F.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
            align_corners=False,
        )  # fmt: skip
        ref = (2 * t - 1).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(np.asarray(preprocess(x)), ref, atol=1e-6, err_msg=f"{h}x{w}")
