"""The Inception-v3 of FID, in Flax linen: the network pytorch-fid and the papers use with the
"pt_inception-2015-12-05" weights, up to its 2048-d pool3 features.

It is torchvision's Inception-v3 with the changes that make it compute what TensorFlow's FID
graph computes: the avg pools of the Mixed_5*/6b-e/7b blocks leave the padding out of the
mean (count_include_pad=False), and the pool branch of Mixed_7c is a 3x3 max pool. Every conv
is conv (no bias) -> BatchNorm (eps 0.001, running statistics) -> ReLU. Images come in NHWC in
[0, 1]; `resize_bilinear` resizes them to 299x299 as `F.interpolate(x, (299, 299),
mode="bilinear", align_corners=False)` does (no antialiasing), then they are mapped to
[-1, 1]. Variables: `params` (conv kernels [kh, kw, in, out], BN scale and bias) and
`batch_stats` (BN mean and var), named after the PyTorch modules (Mixed_5b/branch1x1/conv).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

INPUT_SIZE = 299  # the side the network sees: inputs are resized to 299x299
FEATURE_DIM = 2048  # pool3
BN_EPS = 1e-3


def _pad(p) -> tuple:
    ph, pw = (p, p) if isinstance(p, int) else p
    return ((ph, ph), (pw, pw))


class BasicConv(nn.Module):
    """Conv (no bias, symmetric zero padding as in PyTorch) -> BatchNorm -> ReLU."""

    features: int
    kernel: tuple = (1, 1)
    stride: int = 1
    padding: int | tuple = 0
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(
            self.features, self.kernel, strides=self.stride, padding=_pad(self.padding),
            use_bias=False, precision=self.precision, name="conv",
        )(x)  # fmt: skip
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    """3x3 stride-1 avg pool whose mean leaves the zero padding out (TensorFlow's)."""
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (64 + 64 + 96 + pool)."""

    pool_features: int
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv, precision=self.precision)
        b1 = conv(64, name="branch1x1")(x)
        b5 = conv(48, name="branch5x5_1")(x)
        b5 = conv(64, (5, 5), padding=2, name="branch5x5_2")(b5)
        b3 = conv(64, name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), padding=1, name="branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), padding=1, name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv, precision=self.precision)
        b3 = conv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = conv(64, name="branch3x3dbl_1")(x)
        bd = conv(96, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = conv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b-6e: factorized 7x7 branches (1x7 and 7x1), 4 x 192 channels out."""

    channels_7x7: int
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv, precision=self.precision)
        c7 = self.channels_7x7
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        b1 = conv(192, name="branch1x1")(x)
        b7 = conv(c7, name="branch7x7_1")(x)
        b7 = conv(c7, row[0], padding=row[1], name="branch7x7_2")(b7)
        b7 = conv(192, col[0], padding=col[1], name="branch7x7_3")(b7)
        bd = conv(c7, name="branch7x7dbl_1")(x)
        bd = conv(c7, col[0], padding=col[1], name="branch7x7dbl_2")(bd)
        bd = conv(c7, row[0], padding=row[1], name="branch7x7dbl_3")(bd)
        bd = conv(c7, col[0], padding=col[1], name="branch7x7dbl_4")(bd)
        bd = conv(192, row[0], padding=row[1], name="branch7x7dbl_5")(bd)
        bp = conv(192, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv, precision=self.precision)
        b3 = conv(192, name="branch3x3_1")(x)
        b3 = conv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = conv(192, name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b/7c: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1; the pool is the
    padding-excluding avg pool ("avg", Mixed_7b) or a 3x3 max pool ("max", Mixed_7c)."""

    pool: str = "avg"
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv, precision=self.precision)
        b1 = conv(320, name="branch1x1")(x)
        b3 = conv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = conv(448, name="branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        if self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        elif self.pool == "max":
            pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"InceptionE: pool must be 'avg' or 'max', got {self.pool!r}")
        bp = conv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FidInceptionV3(nn.Module):
    """[B, 299, 299, 3] in [-1, 1] -> pool3 features [B, 2048] (float32).

    Takes inputs already resized and normalized (`preprocess`), so that one compiled network
    serves every input size. `precision` is the matmul/conv precision ("highest" keeps float32
    on TPUs and TF32-capable GPUs, as the metric should)."""

    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        p = self.precision
        conv = functools.partial(BasicConv, precision=p)
        x = conv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = conv(64, (3, 3), padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = conv(80, name="Conv2d_3b_1x1")(x)
        x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)  # [B, 35, 35, 192]
        x = InceptionA(32, precision=p, name="Mixed_5b")(x)
        x = InceptionA(64, precision=p, name="Mixed_5c")(x)
        x = InceptionA(64, precision=p, name="Mixed_5d")(x)
        x = InceptionB(precision=p, name="Mixed_6a")(x)  # [B, 17, 17, 768]
        for name, c7 in (
            ("Mixed_6b", 128),
            ("Mixed_6c", 160),
            ("Mixed_6d", 160),
            ("Mixed_6e", 192),
        ):
            x = InceptionC(c7, precision=p, name=name)(x)
        x = InceptionD(precision=p, name="Mixed_7a")(x)  # [B, 8, 8, 1280]
        x = InceptionE("avg", precision=p, name="Mixed_7b")(x)
        x = InceptionE("max", precision=p, name="Mixed_7c")(x)  # [B, 8, 8, 2048]
        return jnp.mean(x, axis=(1, 2))  # adaptive avg pool to 1x1


@functools.lru_cache(maxsize=32)
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] float32 weights of PyTorch's bilinear resize along one axis with
    align_corners=False and no antialiasing: source coordinate (i + 0.5) * in / out - 0.5,
    clamped at 0, in float32 as PyTorch computes it; neighbours floor(src) and
    min(floor(src) + 1, in - 1)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"bilinear_matrix: sizes must be >= 1, got {in_size} -> {out_size}")
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    # One rounding of scale * (i + 0.5) - 0.5, as PyTorch's kernel compiles it (a fused
    # multiply-add): the product of two float32 values is exact in float64.
    src = (np.float64(scale) * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(f32)
    src = np.maximum(src, f32(0.0))
    lo = np.minimum(src.astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = np.clip(src - lo.astype(f32), f32(0.0), f32(1.0))
    m = np.zeros((out_size, in_size), f32)
    rows = np.arange(out_size)
    np.add.at(m, (rows, lo), f32(1.0) - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def resize_bilinear(images, size: int = INPUT_SIZE, precision: str = "highest"):
    """[B, H, W, C] -> [B, size, size, C], as F.interpolate(mode="bilinear",
    align_corners=False) on NCHW does; a separable pair of small matmuls."""
    _, h, w, _ = images.shape
    mh = jnp.asarray(bilinear_matrix(h, size))
    mw = jnp.asarray(bilinear_matrix(w, size))
    x = jnp.einsum("oh,bhwc->bowc", mh, images, precision=precision)
    return jnp.einsum("pw,bowc->bopc", mw, x, precision=precision)


def preprocess(images, precision: str = "highest"):
    """[B, H, W, 3] in [0, 1] -> [B, 299, 299, 3] in [-1, 1] (pytorch-fid's resize_input and
    normalize_input)."""
    x = jnp.asarray(images, jnp.float32)
    if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        x = resize_bilinear(x, INPUT_SIZE, precision)
    return 2.0 * x - 1.0


@functools.lru_cache(maxsize=1)
def variable_shapes() -> dict:
    """{"params/Mixed_5b/branch1x1/conv/kernel": shape, ...}: every variable of the network,
    by its flat name (the .npz layout), traced without computing anything."""
    model = FidInceptionV3()
    x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    flat = traverse_util.flatten_dict(abstract, sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}
