"""An optional perceptual loss from a small conv feature net whose weights the user supplies
as a local .npz file (nothing is downloaded).

Architecture (`channels`, default PERCEPTUAL_CHANNELS): stages of 3x3 SAME convs + ReLU; a
feature map is taken at the end of every stage and the next stage starts with a 2x2 average
pool. The loss is LPIPS-like without learned layer weights: for each stage, features are
unit-normalized over channels and the squared difference is summed over channels and
averaged over batch and positions; the stages are summed.

The .npz holds, for stage i and conv j, `stage{i}_conv{j}_kernel` [3, 3, C_in, C_out] and
`stage{i}_conv{j}_bias` [C_out]; optionally `mean` and `std` [C_in] normalize the input
(default 0 and 1). Inputs are model-space images in [-1, 1].
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

PERCEPTUAL_CHANNELS = ((16, 16), (32, 32), (64, 64))


def expected_shapes(channels=PERCEPTUAL_CHANNELS, in_channels: int = 3) -> dict:
    """Parameter name -> shape for the architecture `channels`."""
    shapes, cin = {}, in_channels
    for i, stage in enumerate(channels):
        for j, cout in enumerate(stage):
            shapes[f"stage{i}_conv{j}_kernel"] = (3, 3, cin, cout)
            shapes[f"stage{i}_conv{j}_bias"] = (cout,)
            cin = cout
    return shapes


def load_perceptual_weights(path, channels=PERCEPTUAL_CHANNELS, in_channels: int = 3) -> dict:
    """Reads and checks the .npz at `path`; returns name -> float32 jnp array."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"perceptual loss: weights file {path!r} not found; supply a local .npz with "
            f"keys {sorted(expected_shapes(channels, in_channels))[:2]}... (see "
            "mmjax.tokenizers.perceptual)"
        )
    with np.load(path) as data:
        arrays = {k: np.asarray(data[k], np.float32) for k in data.files}
    shapes = expected_shapes(channels, in_channels)
    shapes.update({k: (in_channels,) for k in ("mean", "std") if k in arrays})
    missing = sorted(set(shapes) - set(arrays))
    unexpected = sorted(set(arrays) - set(shapes))
    if missing or unexpected:
        raise ValueError(
            f"perceptual loss: {path!r} does not match channels={channels}: "
            f"missing {missing}, unexpected {unexpected}"
        )
    for name, shape in shapes.items():
        if arrays[name].shape != shape:
            raise ValueError(
                f"perceptual loss: {path!r}: {name} has shape {arrays[name].shape}, "
                f"expected {shape}"
            )
    return {k: jnp.asarray(v) for k, v in arrays.items()}


def perceptual_features(weights: dict, x: jax.Array) -> list[jax.Array]:
    """Feature maps [B, H_i, W_i, C_i] at the end of each stage, for x [B, H, W, C_in]."""
    h = x.astype(jnp.float32)
    if "mean" in weights:
        h = (h - weights["mean"]) / weights["std"]
    feats, i = [], 0
    while f"stage{i}_conv0_kernel" in weights:
        if i > 0:
            b, hh, ww, c = h.shape
            h = h.reshape(b, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))
        j = 0
        while f"stage{i}_conv{j}_kernel" in weights:
            h = jax.lax.conv_general_dilated(
                h,
                weights[f"stage{i}_conv{j}_kernel"],
                window_strides=(1, 1),
                padding="SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            h = jax.nn.relu(h + weights[f"stage{i}_conv{j}_bias"])
            j += 1
        feats.append(h)
        i += 1
    return feats


def perceptual_loss(weights: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """Scalar distance between images x and y (same shape; H, W divisible by 2^(stages-1))."""
    total = jnp.zeros((), jnp.float32)
    for fx, fy in zip(
        perceptual_features(weights, x), perceptual_features(weights, y), strict=True
    ):
        fx = fx / (jnp.linalg.norm(fx, axis=-1, keepdims=True) + 1e-10)
        fy = fy / (jnp.linalg.norm(fy, axis=-1, keepdims=True) + 1e-10)
        total = total + jnp.mean(jnp.sum(jnp.square(fx - fy), axis=-1))
    return total


class PerceptualLoss:
    """`PerceptualLoss.from_file(path)(x, y) -> scalar`; the weights are constants."""

    def __init__(self, weights: dict):
        self.weights = weights

    @classmethod
    def from_file(cls, path, channels=PERCEPTUAL_CHANNELS, in_channels: int = 3):
        return cls(load_perceptual_weights(path, channels, in_channels))

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        return perceptual_loss(jax.lax.stop_gradient(self.weights), x, y)
