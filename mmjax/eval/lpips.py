"""LPIPS (Zhang et al. 2018) in JAX, matching the `lpips` package 0.1.x
(`lpips.LPIPS(net='alex'|'vgg', version='0.1')` called with `normalize=True`).

Images [B, H, W, 3] in [0, 1] are mapped to [-1, 1], shifted and scaled per channel
(`SHIFT`, `SCALE`: the package's ScalingLayer), and run through the `features` trunk of
torchvision's AlexNet or VGG16 (mmjax.eval.backbones). At each of the 5 ReLU taps both feature
maps are unit-normalised along channels (x / (|x| + 1e-10)), their squared difference is
weighted per channel by the non-negative calibration vector `lin{k}` (the package's 1x1 convs,
no bias) and averaged over positions; the distance is the sum over the 5 layers.

Weights are converted once into one .npz (torch is needed only for this step):

    python -m mmjax.eval.lpips convert --net vgg --backbone vgg16-397923af.pth \\
        --out lpips_vgg.npz

`--backbone` is torchvision's ImageNet state dict (`alexnet-owt-7be5be79.pth` or
`vgg16-397923af.pth`; the `features.*` tensors are used, and the lpips package's own trunk
naming `slice{k}.{i}.*` is accepted too); `--lin` defaults to the calibration file shipped
inside the installed lpips package (`lpips/weights/v0.1/{net}.pth`).

API (no torch needed):

    metric = LPIPS.load("lpips_vgg.npz")   # batch_size=16 image pairs per jitted call
    metric.net                              # 'alex' or 'vgg'
    d = metric(images_a, images_b)          # np.ndarray [B] of float32 distances

Images must be float RGB in [0, 1] (clip reconstructions first) and at least 31 (alex) or 16
(vgg) pixels on a side, the smallest the trunks accept. Convolutions run at
`Precision.HIGHEST`, so TPUs and GPUs give float32 results rather than bf16/TF32 ones.
`lpips_distance(variables, x, y, net)` is the jit-able function behind `LPIPS`.
"""

import argparse
import io
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.cli import run
from mmjax.eval.backbones import BACKBONES, ConvSpec, FeatureTrunk, min_image_size, tap_channels
from mmjax.storage import paths

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
FORMAT = "mmjax-lpips-1"
NETS = tuple(BACKBONES)


class LPIPSNet(nn.Module):
    """Per-image LPIPS distance between x and y, both [B, H, W, 3] in [0, 1] -> [B]."""

    net: str
    precision: jax.lax.Precision | str | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x, y):
        b = x.shape[0]
        shift = jnp.asarray(SHIFT, jnp.float32)
        scale = jnp.asarray(SCALE, jnp.float32)
        z = (jnp.concatenate([x, y]).astype(jnp.float32) * 2 - 1 - shift) / scale
        taps = FeatureTrunk(self.net, self.precision, name="backbone")(z)
        total = jnp.zeros((b,), jnp.float32)
        for k, (f, channels) in enumerate(zip(taps, tap_channels(self.net), strict=True)):
            w = self.param(f"lin{k}", nn.initializers.zeros, (channels,), jnp.float32)
            f = f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + EPS)
            d = (f[:b] - f[b:]) ** 2  # [B, h, w, C]
            total = total + jnp.mean(jnp.sum(d * w, axis=-1), axis=(1, 2))
        return total


def expected_shapes(net: str) -> dict[str, tuple[int, ...]]:
    """The .npz arrays of `net` and their shapes (flax layout: conv kernels HWIO)."""
    if net not in BACKBONES:
        raise ValueError(f"LPIPS: net must be one of {NETS}, got {net!r}")
    shapes = {}
    for layer in BACKBONES[net]:
        if isinstance(layer, ConvSpec):
            k, cin, cout = layer.kernel, layer.in_channels, layer.out_channels
            shapes[f"backbone/features_{layer.index}/kernel"] = (k, k, cin, cout)
            shapes[f"backbone/features_{layer.index}/bias"] = (cout,)
    for k, channels in enumerate(tap_channels(net)):
        shapes[f"lin{k}"] = (channels,)
    return shapes


def _params_from_flat(flat: dict) -> dict:
    tree = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(value)
    return {"params": tree}


def validate_arrays(net: str, arrays: dict, where: str) -> dict:
    """`arrays` (npz key -> array) checked against `net`: every tensor present with its shape,
    finite, calibration weights non-negative. Returns them as float32 numpy arrays."""
    out = {}
    for key, shape in expected_shapes(net).items():
        if key not in arrays:
            raise ValueError(f"{where}: missing tensor {key!r} (expected shape {shape}) for {net}")
        a = np.asarray(arrays[key])
        if a.shape != shape:
            raise ValueError(f"{where}: tensor {key!r} has shape {a.shape}, expected {shape}")
        a = a.astype(np.float32)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{where}: tensor {key!r} holds nan or inf")
        if key.startswith("lin") and a.min() < 0:
            raise ValueError(
                f"{where}: calibration tensor {key!r} has negative weights (min {a.min():.3g}); "
                "LPIPS calibration weights are non-negative"
            )
        out[key] = a
    return out


def save_npz(path, net: str, arrays: dict) -> None:
    """Writes validated LPIPS weights of `net` to one .npz at `path` (local or gs://)."""
    arrays = validate_arrays(net, arrays, f"LPIPS weights for {path}")
    buf = io.BytesIO()
    np.savez(buf, format=np.array(FORMAT), net=np.array(net), **arrays)
    paths.write_bytes(path, buf.getvalue())


def load_params(path) -> tuple[str, dict]:
    """(net, flax variables) from an .npz written by `save_npz` (or the converter)."""
    path = os.fspath(path)
    if not paths.exists(path):
        raise FileNotFoundError(
            f"LPIPS weights {path} do not exist; convert them once with "
            "`python -m mmjax.eval.lpips convert --net alex|vgg --backbone FILE.pth --out "
            f"{path}`"
        )
    try:
        with np.load(io.BytesIO(paths.read_bytes(path)), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise ValueError(f"LPIPS weights {path}: not a readable .npz file ({e})") from e
    fmt = str(arrays.pop("format", ""))
    if fmt != FORMAT:
        raise ValueError(f"LPIPS weights {path}: format {fmt!r}, expected {FORMAT!r}")
    if "net" not in arrays:
        raise ValueError(f"LPIPS weights {path}: missing the 'net' entry ({NETS})")
    net = str(arrays.pop("net"))
    if net not in NETS:
        raise ValueError(f"LPIPS weights {path}: net {net!r}, expected one of {NETS}")
    flat = validate_arrays(net, arrays, f"LPIPS weights {path}")
    extra = sorted(set(arrays) - set(flat))
    if extra:
        raise ValueError(f"LPIPS weights {path}: unexpected tensors {extra} for {net}")
    return net, _params_from_flat(flat)


def lpips_distance(variables, x, y, net: str, precision=jax.lax.Precision.HIGHEST):
    """Per-image LPIPS [B] of images x, y [B, H, W, 3] in [0, 1] (jit-able)."""
    return LPIPSNet(net, precision).apply(variables, x, y)


class LPIPS:
    """LPIPS from converted weights: `LPIPS.load(path)(images_a, images_b) -> np.ndarray [B]`."""

    def __init__(self, net: str, variables, batch_size: int = 16):
        if net not in NETS:
            raise ValueError(f"LPIPS: net must be one of {NETS}, got {net!r}")
        if batch_size < 1:
            raise ValueError(f"LPIPS: batch_size must be >= 1, got {batch_size}")
        self.net = net
        self.batch_size = batch_size
        self.variables = variables
        self._fn = jax.jit(lambda v, x, y: lpips_distance(v, x, y, net))

    @classmethod
    def load(cls, path, batch_size: int = 16) -> "LPIPS":
        net, variables = load_params(path)
        return cls(net, variables, batch_size)

    def __call__(self, images_a, images_b) -> np.ndarray:
        a = np.asarray(images_a)
        b = np.asarray(images_b)
        if a.shape != b.shape:
            raise ValueError(f"LPIPS: image shapes differ, {a.shape} vs {b.shape}")
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"LPIPS: expected RGB images [B, H, W, 3], got shape {a.shape}")
        smallest = min_image_size(self.net)
        if min(a.shape[1:3]) < smallest:
            raise ValueError(
                f"LPIPS ({self.net}): images of {a.shape[1]}x{a.shape[2]} pixels are smaller "
                f"than the {smallest}-pixel minimum of the trunk"
            )
        for label, v in (("images_a", a), ("images_b", b)):
            if not np.issubdtype(v.dtype, np.floating):
                raise ValueError(f"LPIPS: {label} must be floats in [0, 1], got dtype {v.dtype}")
            if v.size and not (v.min() >= 0 and v.max() <= 1 + 1e-6):
                raise ValueError(
                    f"LPIPS: {label} hold values in [{v.min():.4g}, {v.max():.4g}], expected "
                    "[0, 1] (clip reconstructions first)"
                )
        n = a.shape[0]
        if n <= self.batch_size:
            return np.asarray(self._fn(self.variables, a, b))
        out = []
        for start in range(0, n, self.batch_size):
            xa, xb = a[start : start + self.batch_size], b[start : start + self.batch_size]
            pad = self.batch_size - xa.shape[0]
            if pad:  # one compiled shape for every chunk; the padded pairs are dropped
                xa = np.concatenate([xa, np.zeros((pad, *xa.shape[1:]), xa.dtype)])
                xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            out.append(np.asarray(self._fn(self.variables, xa, xb))[: self.batch_size - pad])
        return np.concatenate(out)


# ---- conversion from PyTorch files (needs torch) ----

_TRUNK_KEY = re.compile(r"^(?:.*\.)?(?:features|slice\d+)\.(\d+)\.(weight|bias)$")
_LIN_KEY = re.compile(r"^(?:.*\.)?lin(\d+)\.model\.\d+\.weight$")


def _torch_load(path) -> dict:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "converting LPIPS weights reads PyTorch files and needs torch: "
            "pip install torch (or the [parity] extra)"
        ) from e
    path = os.fspath(path)
    if not paths.exists(path):
        raise FileNotFoundError(f"LPIPS conversion: {path} does not exist")
    try:
        state = torch.load(
            io.BytesIO(paths.read_bytes(path)), map_location="cpu", weights_only=True
        )
    except Exception as e:
        raise ValueError(
            f"LPIPS conversion: cannot read {path} as a PyTorch state dict ({e})"
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(
            f"LPIPS conversion: {path} holds a {type(state).__name__}, not a state dict"
        )
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def default_lin_path(net: str) -> str:
    """The v0.1 calibration weights shipped inside the installed lpips package."""
    import importlib.util

    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "LPIPS conversion: the lpips package is not installed, so its calibration weights "
            "cannot be found; pip install lpips, or pass --lin lpips/weights/v0.1/"
            f"{net}.pth from its source"
        )
    return os.path.join(os.path.dirname(spec.origin), "weights", "v0.1", f"{net}.pth")


def convert_arrays(net: str, backbone: dict, lin: dict, backbone_path="backbone", lin_path="lin"):
    """npz arrays of `net` from a torchvision trunk state dict and an lpips calibration state
    dict (name -> numpy array). Errors name the file and the tensor."""
    trunk = {}
    for key, value in backbone.items():
        m = _TRUNK_KEY.match(key)
        if m:
            trunk[(int(m.group(1)), m.group(2))] = (key, value)
    arrays = {}
    for layer in BACKBONES[net]:
        if not isinstance(layer, ConvSpec):
            continue
        for kind in ("weight", "bias"):
            torch_name = f"features.{layer.index}.{kind}"
            dest = f"backbone/features_{layer.index}/{'kernel' if kind == 'weight' else 'bias'}"
            if (layer.index, kind) not in trunk:
                raise ValueError(
                    f"LPIPS conversion: {backbone_path} has no tensor {torch_name!r} of the "
                    f"{net} trunk (is it torchvision's "
                    f"{'alexnet' if net == 'alex' else 'vgg16'} state dict?)"
                )
            name, value = trunk[(layer.index, kind)]
            k, cin, cout = layer.kernel, layer.in_channels, layer.out_channels
            want = (cout, cin, k, k) if kind == "weight" else (cout,)
            if value.shape != want:
                raise ValueError(
                    f"LPIPS conversion: {backbone_path} tensor {name!r} has shape "
                    f"{tuple(value.shape)}, expected {want} for the {net} trunk"
                )
            arrays[dest] = value.transpose(2, 3, 1, 0) if kind == "weight" else value
    lins = {}
    for key, value in lin.items():
        m = _LIN_KEY.match(key)
        if m:
            lins[int(m.group(1))] = (key, value)
    for k, channels in enumerate(tap_channels(net)):
        if k not in lins:
            raise ValueError(
                f"LPIPS conversion: {lin_path} has no tensor 'lin{k}.model.1.weight' "
                f"(the 1x1 calibration conv of layer {k}, shape (1, {channels}, 1, 1))"
            )
        name, value = lins[k]
        if value.shape != (1, channels, 1, 1):
            raise ValueError(
                f"LPIPS conversion: {lin_path} tensor {name!r} has shape {tuple(value.shape)}, "
                f"expected (1, {channels}, 1, 1) for {net}"
            )
        arrays[f"lin{k}"] = value.reshape(channels)
    return arrays


def convert(net: str, backbone_path, out_path, lin_path=None) -> str:
    """Converts torchvision trunk + lpips calibration .pth files into one .npz; returns it."""
    if net not in NETS:
        raise ValueError(f"LPIPS conversion: --net must be one of {NETS}, got {net!r}")
    lin_path = lin_path or default_lin_path(net)
    arrays = convert_arrays(
        net, _torch_load(backbone_path), _torch_load(lin_path), backbone_path, lin_path
    )
    save_npz(out_path, net, arrays)
    return os.fspath(out_path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmjax.eval.lpips", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="torchvision + lpips .pth files -> one .npz")
    conv.add_argument("--net", required=True, choices=NETS)
    conv.add_argument("--backbone", required=True, help="torchvision alexnet/vgg16 state dict")
    conv.add_argument("--lin", default=None, help="lpips calibration .pth (default: installed)")
    conv.add_argument("--out", required=True, help="output .npz (local or gs://)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.net, args.backbone, args.out, args.lin)
    except (ValueError, FileNotFoundError, ImportError) as e:
        parser.error(str(e))
    print(f"wrote LPIPS ({args.net}) weights to {out}")
    return 0


if __name__ == "__main__":
    run(main, "python -m mmjax.eval.lpips")
