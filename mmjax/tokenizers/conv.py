"""VQGAN-style convolutional encoder and decoder (Esser et al. 2021, "Taming Transformers").

Downsampling factor: 2 ** (len(channel_mult) - 1). The first level keeps the resolution and
every later level halves it with a stride-2 conv, so channel_mult=(1, 2, 2, 4) gives a
factor of 8 and (1, 1, 2, 2, 4) a factor of 16 (VQGAN's f16). The decoder mirrors the
encoder with nearest-neighbour upsampling followed by a 3x3 conv.

Images are channels-last [B, H, W, C]. Conv kernels are named (None, None, None, "embed")
and norm scales/biases ("embed",).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import MultiHeadAttention

CONV_AXES = (None, None, None, "embed")


def conv(features: int, kernel: int = 3, stride: int = 1, name: str | None = None) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding="SAME",
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


def group_norm(channels: int, groups: int = 32, name: str | None = None) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= `groups` that divides `channels`."""
    return nn.GroupNorm(
        num_groups=math.gcd(groups, channels),
        epsilon=1e-6,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


class ResBlock(nn.Module):
    """x + conv(swish(GN(conv(swish(GN(x)))))), with a 1x1 conv on the skip when widths differ."""

    features: int
    groups: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = conv(self.features)(nn.swish(group_norm(x.shape[-1], self.groups)(x)))
        h = conv(self.features)(nn.swish(group_norm(self.features, self.groups)(h)))
        if x.shape[-1] != self.features:
            x = conv(self.features, kernel=1, name="skip")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a [B, H, W, C] map, residual."""

    groups: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        t = group_norm(c, self.groups)(x).reshape(b, h * w, c)
        return x + MultiHeadAttention(num_heads=1)(t).reshape(b, h, w, c)


def _check_mult(owner: str, channel_mult) -> None:
    if len(channel_mult) < 1 or any(int(m) < 1 for m in channel_mult):
        raise ValueError(f"{owner}: channel_mult must be positive ints, got {channel_mult}")


class ConvEncoder(nn.Module):
    """[B, H, W, C_in] -> [B, H/f, W/f, z_channels], f = 2 ** (len(channel_mult) - 1).

    Attributes:
      channels: base width; level i has channels * channel_mult[i].
      channel_mult: per-level width multipliers (its length sets the factor).
      num_res_blocks: residual blocks per level.
      attention: a self-attention block in the middle, at the lowest resolution.
      z_channels: output (quantizer input) width.
      groups: GroupNorm groups (reduced to a divisor of each width).
    """

    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 1
    attention: bool = False
    z_channels: int = 8
    groups: int = 32

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _check_mult(type(self).__name__, self.channel_mult)
        h = conv(self.channels, name="conv_in")(x)
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.channels * mult, self.groups)(h)
            if level != len(self.channel_mult) - 1:
                h = conv(h.shape[-1], stride=2, name=f"down_{level}")(h)
        h = ResBlock(h.shape[-1], self.groups, name="mid_res_0")(h)
        if self.attention:
            h = AttnBlock(self.groups, name="mid_attn")(h)
        h = ResBlock(h.shape[-1], self.groups, name="mid_res_1")(h)
        h = nn.swish(group_norm(h.shape[-1], self.groups, name="norm_out")(h))
        return conv(self.z_channels, name="conv_out")(h)


class ConvDecoder(nn.Module):
    """[B, h, w, z] -> [B, h*f, w*f, out_channels]; mirrors ConvEncoder (same fields) with
    num_res_blocks + 1 blocks per level, as VQGAN."""

    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 1
    attention: bool = False
    out_channels: int = 3
    groups: int = 32

    @property
    def upsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        _check_mult(type(self).__name__, self.channel_mult)
        h = conv(self.channels * self.channel_mult[-1], name="conv_in")(z)
        h = ResBlock(h.shape[-1], self.groups, name="mid_res_0")(h)
        if self.attention:
            h = AttnBlock(self.groups, name="mid_attn")(h)
        h = ResBlock(h.shape[-1], self.groups, name="mid_res_1")(h)
        for level in reversed(range(len(self.channel_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock(self.channels * self.channel_mult[level], self.groups)(h)
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest, x2
                h = conv(h.shape[-1], name=f"up_{level}")(h)
        h = nn.swish(group_norm(h.shape[-1], self.groups, name="norm_out")(h))
        return conv(self.out_channels, name="conv_out")(h).astype(jnp.float32)
