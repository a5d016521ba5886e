"""FID / rFID as pytorch-fid computes it: pool3 features of the FID Inception-v3
(mmjax.eval.inception) from weights the user supplies, Gaussian statistics, Frechet distance.

API (what the reconstruction evaluation calls):

- `FidInception.load(path, batch_size=50) -> FidInception`: the network with its weights from
  an `.npz` in mmjax's layout (made once by `convert`, below).
- `obj.features(images, progress=False) -> np.ndarray [B, 2048] float32`; images are float
  [B, H, W, 3] in [0, 1], any H and W (resized to 299x299 bilinearly, as pytorch-fid does).
  Jitted, run in batches of `batch_size` on the default device; the network compiles once per
  batch size, the resize once per input size. Convolutions run at Precision.HIGHEST, so TPUs
  and GPUs give float32 features, not bf16/TF32 ones.
- `feature_statistics(features) -> (mu [D], sigma [D, D])`, float64, sigma with ddof=1
  (np.cov's, as pytorch-fid).
- `frechet_distance(mu1, sigma1, mu2, sigma2) -> float`: pytorch-fid's formula and rule
  (scipy.linalg.sqrtm of sigma1 sigma2; eps * I added to both covariances when that is not
  finite; a complex root's real part when its diagonal is real within 1e-3, else an error).
  The 2048-d sqrtm takes tens of seconds on a few CPU cores, as in pytorch-fid.
- `rfid_from_features(feats_ref, feats_rec) -> float`, and `rfid(reference_images,
  reconstructed_images, weights)` for in-memory image sets.

Weights: pytorch-fid's FID Inception state dict `pt_inception-2015-12-05-6726825d.pth`,
downloaded by the user, converted once (this needs torch; loading the .npz does not):

    python -m mmjax.eval.fid convert --pth pt_inception-2015-12-05-6726825d.pth \\
        --out inception_fid.npz

FID is biased upward for small sets and needs more images than feature dimensions (2048) for
a full-rank covariance; papers report rFID on 50k images (ImageNet val).
"""

import argparse
import io
import warnings

import jax
import numpy as np
from flax import traverse_util
from scipy import linalg
from tqdm import tqdm

from mmjax.cli import run
from mmjax.eval.inception import FEATURE_DIM, FidInceptionV3, preprocess, variable_shapes
from mmjax.storage import paths

_MIXED_6 = ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e")
# pytorch_fid.inception.InceptionV3 keeps the Inception3 modules under `blocks.<i>.<j>`.
_WRAPPER_NAMES = {
    "blocks.0.0": "Conv2d_1a_3x3",
    "blocks.0.1": "Conv2d_2a_3x3",
    "blocks.0.2": "Conv2d_2b_3x3",
    "blocks.1.0": "Conv2d_3b_1x1",
    "blocks.1.1": "Conv2d_4a_3x3",
    **{
        f"blocks.2.{j}": name
        for j, name in enumerate(("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", *_MIXED_6))
    },
    "blocks.3.0": "Mixed_7a",
    "blocks.3.1": "Mixed_7b",
    "blocks.3.2": "Mixed_7c",
}
# .npz leaf -> (PyTorch BasicConv2d leaf, axes that take the PyTorch tensor to ours)
_LEAVES = {
    "conv/kernel": ("conv.weight", (2, 3, 1, 0)),  # [out, in, kh, kw] -> [kh, kw, in, out]
    "bn/scale": ("bn.weight", None),
    "bn/bias": ("bn.bias", None),
    "bn/mean": ("bn.running_mean", None),
    "bn/var": ("bn.running_var", None),
}
CONVERT_HINT = (
    "make it once from pytorch-fid's weights: python -m mmjax.eval.fid convert "
    "--pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz"
)


def torch_key(npz_key: str) -> tuple[str, tuple | None]:
    """'params/Mixed_5b/branch1x1/conv/kernel' -> ('Mixed_5b.branch1x1.conv.weight', axes)."""
    _, *module, a, b = npz_key.split("/")
    name, axes = _LEAVES[f"{a}/{b}"]
    return ".".join([*module, name]), axes


def _unwrap_layout(state: dict) -> dict:
    """pytorch-fid InceptionV3 keys (blocks.2.0.branch1x1...) -> Inception3 keys (Mixed_5b...)."""
    if not any(k.startswith("blocks.") for k in state):
        return state
    out = {}
    for k, v in state.items():
        prefix = ".".join(k.split(".")[:3])
        out[_WRAPPER_NAMES.get(prefix, prefix) + k[len(prefix) :]] = v
    return out


def convert_state_dict(state: dict, source: str = "state dict") -> dict:
    """A PyTorch state dict of the FID Inception (Inception3 keys as in the .pth file, or
    pytorch-fid's InceptionV3 `blocks.*` keys) -> {npz key: float32 array}. The classifier
    (`fc.*`) and `num_batches_tracked` are not needed and are dropped."""
    state = _unwrap_layout({str(k): v for k, v in state.items()})
    out = {}
    for key, shape in variable_shapes().items():
        tkey, axes = torch_key(key)
        if tkey not in state:
            near = sorted(k for k in state if k.split(".")[0] == tkey.split(".")[0])[:3]
            raise ValueError(
                f"{source}: tensor {tkey!r} of the FID Inception is missing "
                f"({len(state)} tensors in the file; near it: {near or 'none'}); expected "
                "pytorch-fid's pt_inception-2015-12-05-6726825d.pth"
            )
        value = state[tkey]
        value = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        if axes is not None and value.ndim == len(axes):
            value = value.transpose(axes)
        if value.shape != shape:
            raise ValueError(
                f"{source}: tensor {tkey!r} has shape {value.shape} after conversion, the FID "
                f"Inception expects {shape}"
            )
        out[key] = value.astype(np.float32)
    return out


def convert(pth_path, out_path) -> str:
    """Reads pytorch-fid's FID Inception .pth (needs torch) and writes mmjax's .npz."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "converting a .pth needs torch (pip install torch, or mmjax's [parity] extra)"
        ) from e
    if not paths.exists(pth_path):
        raise FileNotFoundError(f"FID Inception weights: no file {pth_path}")
    try:
        state = torch.load(
            io.BytesIO(paths.read_bytes(pth_path)), map_location="cpu", weights_only=True
        )
    except Exception as e:
        raise ValueError(f"{pth_path}: not a readable PyTorch state dict ({e})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{pth_path}: expected a state dict, got {type(state).__name__}")
    arrays = convert_state_dict(state, source=str(pth_path))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    paths.write_bytes(out_path, buf.getvalue())
    return str(out_path)


def load_variables(path) -> dict:
    """The .npz written by `convert` -> Flax variables {"params": ..., "batch_stats": ...}.
    A missing file, a file that is not an .npz, a missing, extra or misshapen tensor, or a
    non-finite value is a ValueError (FileNotFoundError) that names the file and tensor."""
    if not paths.exists(path):
        raise FileNotFoundError(f"FID Inception weights: no file {path}; {CONVERT_HINT}")
    try:
        npz = np.load(io.BytesIO(paths.read_bytes(path)), allow_pickle=False)
        stored = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise ValueError(
            f"{path}: not an .npz of FID Inception weights ({e}); {CONVERT_HINT}"
        ) from e
    expected = variable_shapes()
    missing = [k for k in expected if k not in stored]
    if missing:
        raise ValueError(
            f"{path}: tensor {missing[0]!r} is missing ({len(missing)} of {len(expected)} "
            f"missing); not FID Inception weights in mmjax's layout. {CONVERT_HINT}"
        )
    extra = sorted(set(stored) - set(expected))
    if extra:
        raise ValueError(f"{path}: unexpected tensors {extra[:3]} ({len(extra)}); {CONVERT_HINT}")
    flat = {}
    for key, shape in expected.items():
        value = stored[key]
        if value.shape != shape:
            raise ValueError(f"{path}: tensor {key!r} has shape {value.shape}, expected {shape}")
        if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
            raise ValueError(f"{path}: tensor {key!r} is not finite floats ({value.dtype})")
        flat[key] = value.astype(np.float32)
    return traverse_util.unflatten_dict(flat, sep="/")


def check_images(images, what: str = "images") -> np.ndarray:
    """float32 [B, H, W, 3] in [0, 1], or a ValueError that says what is wrong."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{what}: expected [B, H, W, 3] RGB images, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what}: expected float images in [0, 1], got {x.dtype} (uint8: / 255)")
    if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise ValueError(
            f"{what}: values must be finite and in [0, 1], got [{np.nanmin(x)}, {np.nanmax(x)}]"
        )
    return x.astype(np.float32, copy=False)


class FidInception:
    """The FID Inception with its weights on device; `features` gives pool3 features."""

    def __init__(self, variables: dict, batch_size: int = 50, precision: str = "highest"):
        if batch_size < 1:
            raise ValueError(f"FidInception: batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.variables = jax.device_put(variables)
        model = FidInceptionV3(precision=precision)
        self._net = jax.jit(model.apply)
        self._preprocess = jax.jit(lambda x: preprocess(x, precision))

    @classmethod
    def load(cls, path, batch_size: int = 50, precision: str = "highest") -> "FidInception":
        return cls(load_variables(path), batch_size=batch_size, precision=precision)

    def features(self, images, progress: bool = False) -> np.ndarray:
        """float [B, H, W, 3] in [0, 1] -> pool3 features [B, 2048] float32. The last batch
        is zero-padded to the batch size (one compile); padding never changes a result.
        `progress` shows a bar over the batches."""
        x = check_images(images)
        n = len(x)
        if n == 0:
            return np.zeros((0, FEATURE_DIM), np.float32)
        bs = min(self.batch_size, n)
        out = []
        for start in tqdm(range(0, n, bs), desc="FID features", unit="batch", disable=not progress):
            chunk = x[start : start + bs]
            if len(chunk) < bs:
                pad = np.zeros((bs - len(chunk), *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            feats = self._net(self.variables, self._preprocess(chunk))
            out.append(np.asarray(feats)[: min(bs, n - start)])
        return np.concatenate(out).astype(np.float32, copy=False)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mu [D], sigma [D, D]) in float64 of features [N, D], N >= 2: the mean and np.cov
    (ddof=1), as pytorch-fid's calculate_activation_statistics."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"feature_statistics: expected features [N >= 2, D], got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)), in float64, with
    pytorch-fid's rule: sqrtm is scipy.linalg.sqrtm of the product; if it is not finite, it
    is recomputed on (sigma1 + eps I)(sigma2 + eps I) (with a warning); a complex result is
    taken by its real part when every diagonal imaginary part is within 1e-3 of 0, else it is
    a ValueError."""
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"frechet_distance: means of shapes {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: covariances of shapes {s1.shape} and {s2.shape}, expected {(d, d)}"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"frechet_distance: singular product of covariances; adding {eps} to their diagonals",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = np.eye(d) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"frechet_distance: sqrtm has an imaginary component of "
                f"{np.max(np.abs(covmean.imag)):.3g}"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def rfid_from_features(feats_ref, feats_rec) -> float:
    """FID between the Gaussians fitted to two feature sets [N, D] (N may differ)."""
    return frechet_distance(*feature_statistics(feats_ref), *feature_statistics(feats_rec))


def rfid(reference_images, reconstructed_images, weights, batch_size: int = 50) -> float:
    """rFID of two image sets (float [N, H, W, 3] in [0, 1]); `weights` is the .npz path or a
    loaded FidInception."""
    model = weights if isinstance(weights, FidInception) else FidInception.load(weights, batch_size)
    return rfid_from_features(
        model.features(check_images(reference_images, "reference_images")),
        model.features(check_images(reconstructed_images, "reconstructed_images")),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmjax.eval.fid",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="pytorch-fid's FID Inception .pth -> mmjax .npz")
    conv.add_argument("--pth", required=True, help="pt_inception-2015-12-05-6726825d.pth")
    conv.add_argument("--out", required=True, help="the .npz to write (local or gs://)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.pth, args.out)
        load_variables(out)  # what was written reads back as a complete set of weights
    except (ValueError, FileNotFoundError, ImportError) as e:
        parser.error(str(e))
    print(f"wrote FID Inception weights to {out}")
    return 0


if __name__ == "__main__":
    run(main, "python -m mmjax.eval.fid")
