"""LPIPS: a float64 numpy forward of the torchvision trunks (random weights, PyTorch layout,
through the converter), metric properties, the .npz loader's and converter's errors; in the
slow run, parity with the lpips package itself (random trunk, its shipped calibration)."""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from mmjax.eval import lpips as lp

# torchvision `features`, written out independently of mmjax.eval.backbones:
# ("conv", index, in, out, kernel, stride, pad), ("pool", window, stride), ("tap",).
ALEX = [
    ("conv", 0, 3, 64, 11, 4, 2), ("tap",), ("pool", 3, 2),
    ("conv", 3, 64, 192, 5, 1, 2), ("tap",), ("pool", 3, 2),
    ("conv", 6, 192, 384, 3, 1, 1), ("tap",),
    ("conv", 8, 384, 256, 3, 1, 1), ("tap",),
    ("conv", 10, 256, 256, 3, 1, 1), ("tap",),
]  # fmt: skip
VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def _vgg_layers():
    layers, index, cin = [], 0, 3
    for v in VGG_CFG:
        if v == "M":
            layers += [("tap",), ("pool", 2, 2)]
            index += 1
        else:
            layers.append(("conv", index, cin, v, 3, 1, 1))
            index, cin = index + 2, v
    return [*layers, ("tap",)]


LAYERS = {"alex": ALEX, "vgg": _vgg_layers()}


def _torch_style_weights(net, seed):
    """(trunk state dict, calibration state dict) of random numpy arrays in PyTorch layout."""
    rng = np.random.default_rng(seed)
    trunk, lin, channels = {}, {}, None
    for layer in LAYERS[net]:
        if layer[0] == "conv":
            _, i, cin, cout, k, _, _ = layer
            std = np.sqrt(2.0 / (cin * k * k))
            trunk[f"features.{i}.weight"] = (std * rng.standard_normal((cout, cin, k, k))).astype(
                np.float32
            )
            trunk[f"features.{i}.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
            channels = cout
        elif layer[0] == "tap":
            w = np.abs(rng.standard_normal((1, channels, 1, 1))).astype(np.float32) / channels
            lin[f"lin{len(lin)}.model.1.weight"] = w
    return trunk, lin


def _np_lpips(net, trunk, lin, x, y):
    """LPIPS of NHWC images in [0, 1], float64, straight from the package's definition."""
    shift = np.array([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = np.array([0.458, 0.448, 0.450])[None, :, None, None]

    def features(img):
        h = (2 * img.transpose(0, 3, 1, 2).astype(np.float64) - 1 - shift) / scale
        taps = []
        for layer in LAYERS[net]:
            if layer[0] == "conv":
                _, i, _, _, k, s, p = layer
                h = np.pad(h, ((0, 0), (0, 0), (p, p), (p, p)))
                win = sliding_window_view(h, (k, k), axis=(2, 3))[:, :, ::s, ::s]
                w = trunk[f"features.{i}.weight"].astype(np.float64)
                h = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
                h = np.maximum(h + trunk[f"features.{i}.bias"][None, :, None, None], 0)
            elif layer[0] == "pool":
                _, k, s = layer
                h = sliding_window_view(h, (k, k), axis=(2, 3))[:, :, ::s, ::s].max(axis=(4, 5))
            else:
                taps.append(h)
        return taps

    total = 0.0
    for k, (f0, f1) in enumerate(zip(features(x), features(y), strict=True)):
        f0 = f0 / (np.sqrt((f0**2).sum(axis=1, keepdims=True)) + 1e-10)
        f1 = f1 / (np.sqrt((f1**2).sum(axis=1, keepdims=True)) + 1e-10)
        w = lin[f"lin{k}.model.1.weight"].astype(np.float64)
        total = total + ((f0 - f1) ** 2 * w).sum(axis=1).mean(axis=(1, 2))
    return total


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """net -> (npz path, trunk dict, lin dict): random weights converted without torch."""
    root = tmp_path_factory.mktemp("lpips")
    out = {}
    for seed, net in enumerate(lp.NETS):
        trunk, lin = _torch_style_weights(net, seed)
        path = str(root / f"{net}.npz")
        lp.save_npz(path, net, lp.convert_arrays(net, trunk, lin))
        out[net] = path, trunk, lin
    return out


def _pairs(n, size, seed, noise=0.1):
    rng = np.random.default_rng(seed)
    a = rng.random((n, size, size, 3)).astype(np.float32)
    return a, np.clip(a + noise * rng.standard_normal(a.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("net, size", [("alex", 48), ("vgg", 32)])
def test_matches_numpy_forward(converted, net, size):
    path, trunk, lin = converted[net]
    metric = lp.LPIPS.load(path)
    assert metric.net == net
    a, b = _pairs(2, size, seed=1)
    ours = metric(a, b)
    assert ours.shape == (2,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _np_lpips(net, trunk, lin, a, b), rtol=1e-4)


def test_distance_properties(converted):
    metric = lp.LPIPS.load(converted["alex"][0], batch_size=2)
    a, b = _pairs(5, 40, seed=2)
    d_ab = metric(a, b)
    np.testing.assert_allclose(metric(a, a), 0, atol=1e-12)
    np.testing.assert_allclose(metric(b, a), d_ab, rtol=1e-6)
    assert np.all(d_ab > 0)
    # Chunks of 2 (the last padded) give what one batch and single pairs give.
    whole = lp.LPIPS.load(converted["alex"][0], batch_size=8)(a, b)
    np.testing.assert_allclose(d_ab, whole, rtol=1e-6)
    singles = np.concatenate([metric(a[i : i + 1], b[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(singles, whole, rtol=1e-6)
    # More distortion -> larger distance.
    _, far = _pairs(5, 40, seed=2, noise=0.4)
    assert np.all(metric(a, far) > d_ab)


def test_bad_images_raise_clear_errors(converted):
    metric = lp.LPIPS.load(converted["alex"][0])
    a, b = _pairs(2, 40, seed=3)
    with pytest.raises(ValueError, match="shapes differ"):
        metric(a, b[:1])
    with pytest.raises(ValueError, match=r"RGB images \[B, H, W, 3\]"):
        metric(a[..., :1], b[..., :1])
    with pytest.raises(ValueError, match=r"30x30 pixels are smaller than the 31-pixel minimum"):
        metric(a[:, :30, :30], b[:, :30, :30])
    with pytest.raises(ValueError, match=r"images_b hold values in .*expected \[0, 1\]"):
        metric(a, b * 255)
    with pytest.raises(ValueError, match="must be floats"):
        metric((a * 255).astype(np.uint8), (b * 255).astype(np.uint8))


def _rewrite(src, dst, edit):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    np.savez(dst, **arrays)
    return str(dst)


def test_loader_errors_name_file_and_tensor(converted, tmp_path):
    src = converted["alex"][0]
    missing = str(tmp_path / "nope.npz")
    with pytest.raises(
        FileNotFoundError, match=r"nope\.npz do not exist.*mmjax\.eval\.lpips convert"
    ):
        lp.LPIPS.load(missing)
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match=r"junk\.npz: not a readable \.npz"):
        lp.LPIPS.load(str(tmp_path / "junk.npz"))

    def drop(key):
        return lambda a: a.pop(key)

    def put(key, value):
        return lambda a: a.__setitem__(key, value)

    cases = [
        (drop("backbone/features_6/kernel"), r"missing tensor 'backbone/features_6/kernel'"),
        (drop("lin3"), r"missing tensor 'lin3' \(expected shape \(256,\)\)"),
        (
            put("backbone/features_3/kernel", np.zeros((5, 5, 64, 190), np.float32)),
            r"'backbone/features_3/kernel' has shape \(5, 5, 64, 190\), expected \(5, 5, 64, 192\)",
        ),
        (put("lin0", -np.ones(64, np.float32)), r"'lin0' has negative weights"),
        (put("lin1", np.full(192, np.nan, np.float32)), r"'lin1' holds nan"),
        (put("net", np.array("squeeze")), r"net 'squeeze', expected one of \('alex', 'vgg'\)"),
        (drop("net"), r"missing the 'net' entry"),
        (put("format", np.array("other")), r"format 'other', expected 'mmjax-lpips-1'"),
        (put("extra", np.zeros(3)), r"unexpected tensors \['extra'\]"),
    ]
    for i, (edit, pattern) in enumerate(cases):
        path = _rewrite(src, tmp_path / f"bad{i}.npz", edit)
        with pytest.raises(ValueError, match=rf"bad{i}\.npz.*{pattern}"):
            lp.LPIPS.load(path)


def test_converter_maps_names_and_reports_errors():
    trunk, lin = _torch_style_weights("alex", 7)
    arrays = lp.convert_arrays("alex", trunk, lin)
    np.testing.assert_array_equal(
        arrays["backbone/features_3/kernel"], trunk["features.3.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(arrays["lin2"], lin["lin2.model.1.weight"].reshape(-1))
    # The lpips package's own names (a saved `LPIPS.net` or whole `LPIPS` state dict) work too.
    slices = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    lpips_names = {
        f"net.slice{slices[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v for k, v in trunk.items()
    }
    renamed = lp.convert_arrays("alex", {**lpips_names, "scaling_layer.shift": 0}, lin)
    assert all(np.array_equal(arrays[k], renamed[k]) for k in arrays)

    short = {k: v for k, v in trunk.items() if k != "features.8.bias"}
    with pytest.raises(ValueError, match=r"alex\.pth has no tensor 'features\.8\.bias'"):
        lp.convert_arrays("alex", short, lin, backbone_path="alex.pth")
    vgg_trunk, vgg_lin = _torch_style_weights("vgg", 8)
    with pytest.raises(
        ValueError, match=r"vgg16\.pth tensor 'features\.0\.weight' has shape \(64, 3, 3, 3\)"
    ):
        lp.convert_arrays("alex", vgg_trunk, lin, backbone_path="vgg16.pth")
    with pytest.raises(ValueError, match=r"vgg\.pth tensor 'lin1\.model\.1\.weight' has shape"):
        lp.convert_arrays("alex", trunk, vgg_lin, lin_path="vgg.pth")
    with pytest.raises(ValueError, match=r"lin has no tensor 'lin4\.model\.1\.weight'"):
        lp.convert_arrays("alex", trunk, {k: v for k, v in lin.items() if "lin4" not in k})


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision's `pretrained=` deprecation
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_parity_with_lpips_package(net, tmp_path):
    torch = pytest.importorskip("torch")
    lpips = pytest.importorskip("lpips")

    torch.manual_seed(0)
    # pretrained=True loads the package's shipped v0.1 calibration (lpips/weights/v0.1/);
    # pnet_rand=True builds the torchvision trunk with random weights: nothing is downloaded.
    ref = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    ref.eval()
    trunk = {f"features.{k.split('.', 1)[1]}": v for k, v in ref.net.state_dict().items()}
    torch.save(trunk, tmp_path / "trunk.pth")  # torchvision naming, as alexnet-owt-*.pth
    out = tmp_path / f"lpips_{net}.npz"
    assert lp.main(["convert", "--net", net, "--backbone", str(tmp_path / "trunk.pth"),
                    "--out", str(out)]) == 0  # fmt: skip
    metric = lp.LPIPS.load(out)
    for size in (64, 128):
        a, b = _pairs(3, size, seed=size, noise=0.15)
        with torch.no_grad():
            expected = (
                ref(
                    torch.from_numpy(a).permute(0, 3, 1, 2),
                    torch.from_numpy(b).permute(0, 3, 1, 2),
                    normalize=True,
                )
                .flatten()
                .numpy()
            )
        np.testing.assert_allclose(metric(a, b), expected, rtol=1e-4)
    # The trunk's smallest input agrees with the package's.
    smallest = 31 if net == "alex" else 16
    a, b = _pairs(1, smallest, seed=0)
    with torch.no_grad():
        expected = ref(
            torch.from_numpy(a).permute(0, 3, 1, 2),
            torch.from_numpy(b).permute(0, 3, 1, 2),
            normalize=True,
        )
    np.testing.assert_allclose(metric(a, b), expected.flatten().numpy(), rtol=1e-4)
    with pytest.raises(RuntimeError):
        ref(
            torch.zeros(1, 3, smallest - 1, smallest - 1),
            torch.zeros(1, 3, smallest - 1, smallest - 1),
        )
    with pytest.raises(ValueError, match=f"{smallest}-pixel minimum"):
        metric(a[:, 1:, 1:], b[:, 1:, 1:])
