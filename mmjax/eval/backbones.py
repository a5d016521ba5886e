"""The convolutional trunks of torchvision's AlexNet and VGG16 (`features` only), in Flax linen,
NHWC, returning the ReLU outputs that LPIPS compares.

Each layer is named after its index in torchvision's `features` Sequential (`features_0` holds
`features.0.weight`/`.bias`), so a torchvision state dict maps onto the parameters one to one.
"""

from typing import NamedTuple

import flax.linen as nn
import jax


class ConvSpec(NamedTuple):
    """One torchvision `features[index]` Conv2d (followed by a ReLU)."""

    index: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int


class PoolSpec(NamedTuple):
    """A MaxPool2d (no padding, floor mode) before the next conv."""

    window: int
    stride: int


class TapSpec(NamedTuple):
    """Emit the current activation (a ReLU output) as an LPIPS layer."""


_TAP = TapSpec()

# AlexNet features: taps after the ReLUs at indices 1, 4, 7, 9, 11 (lpips' relu1..relu5).
ALEXNET = (
    ConvSpec(0, 3, 64, 11, 4, 2), _TAP,
    PoolSpec(3, 2), ConvSpec(3, 64, 192, 5, 1, 2), _TAP,
    PoolSpec(3, 2), ConvSpec(6, 192, 384, 3, 1, 1), _TAP,
    ConvSpec(8, 384, 256, 3, 1, 1), _TAP,
    ConvSpec(10, 256, 256, 3, 1, 1), _TAP,
)  # fmt: skip


def _vgg16():
    layers, index, cin = [], 0, 3
    for block, (cout, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        if block:
            layers.append(PoolSpec(2, 2))
            index += 1
        for _ in range(convs):
            layers.append(ConvSpec(index, cin, cout, 3, 1, 1))
            index += 2  # conv, relu
            cin = cout
        layers.append(_TAP)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    return tuple(layers)


# VGG16 features up to relu5_3 (index 29); convs at 0, 2, 5, 7, 10, 12, 14, ..., 28.
VGG16 = _vgg16()

BACKBONES = {"alex": ALEXNET, "vgg": VGG16}


def tap_channels(net: str) -> tuple[int, ...]:
    """Channels of each tapped layer, e.g. (64, 192, 384, 256, 256) for alex."""
    out, channels = [], None
    for layer in BACKBONES[net]:
        if isinstance(layer, ConvSpec):
            channels = layer.out_channels
        elif isinstance(layer, TapSpec):
            out.append(channels)
    return tuple(out)


def min_image_size(net: str) -> int:
    """Smallest square side for which every tapped layer is at least 1x1."""
    side = 1
    while True:
        size, ok = side, True
        for layer in BACKBONES[net]:
            if isinstance(layer, ConvSpec):
                size = (size + 2 * layer.padding - layer.kernel) // layer.stride + 1
            elif isinstance(layer, PoolSpec):
                size = (size - layer.window) // layer.stride + 1
            if size < 1:
                ok = False
                break
        if ok:
            return side
        side += 1


class FeatureTrunk(nn.Module):
    """The `net` ('alex' or 'vgg') trunk: [B, H, W, 3] -> list of ReLU outputs [B, h, w, c]."""

    net: str
    precision: jax.lax.Precision | str | None = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        if self.net not in BACKBONES:
            raise ValueError(
                f"FeatureTrunk: net must be one of {sorted(BACKBONES)}, got {self.net!r}"
            )
        taps = []
        for layer in BACKBONES[self.net]:
            if isinstance(layer, ConvSpec):
                p = layer.padding
                x = nn.Conv(
                    layer.out_channels,
                    (layer.kernel, layer.kernel),
                    strides=layer.stride,
                    padding=((p, p), (p, p)),
                    precision=self.precision,
                    name=f"features_{layer.index}",
                )(x)
                x = nn.relu(x)
            elif isinstance(layer, PoolSpec):
                window = (layer.window, layer.window)
                x = nn.max_pool(x, window, strides=(layer.stride, layer.stride), padding="VALID")
            else:
                taps.append(x)
        return taps
