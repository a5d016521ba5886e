"""ViT encoder and decoder (ViT-VQGAN, Yu et al. 2022): patchify, pre-LN transformer blocks
with fixed 2D sin-cos positions, and a linear map to the quantizer's input width.

ViT-VQGAN's factorized low-dimensional codes are the quantizer's business (VectorQuantizer's
`codebook_dim`); here `z_dim` is just the width handed to the quantizer.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import TransformerBlock, dense, layer_norm, sincos_2d


def patchify(x: jax.Array, p: int) -> jax.Array:
    """[B, H, W, C] -> [B, H/p, W/p, p*p*C] (each patch row-major, channels last)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // p, w // p, p * p * c)


def unpatchify(x: jax.Array, p: int, channels: int) -> jax.Array:
    """Inverse of `patchify`: [B, h, w, p*p*C] -> [B, h*p, w*p, C]."""
    b, h, w, _ = x.shape
    x = x.reshape(b, h, w, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * p, w * p, channels)


class _Trunk(nn.Module):
    """Positions + `depth` pre-LN blocks + final LayerNorm on a [B, h, w, width] grid."""

    depth: int
    heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, d = x.shape
        t = x.reshape(b, h * w, d) + jnp.asarray(sincos_2d(h, w, d), x.dtype)[None]
        for i in range(self.depth):
            t = TransformerBlock(self.heads, self.mlp_dim, name=f"block_{i}")(t)
        return layer_norm(name="norm_out")(t).reshape(b, h, w, d)


class ViTEncoder(nn.Module):
    """[B, H, W, C_in] -> [B, H/p, W/p, z_dim]; H and W must be multiples of patch_size.

    Attributes: patch_size, width, depth, heads, mlp_dim (the transformer), z_dim (output).
    """

    patch_size: int = 8
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 512
    z_dim: int = 32

    @property
    def downsample_factor(self) -> int:
        return self.patch_size

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = dense(self.width, (None, "embed"), name="patch_embed")(patchify(x, self.patch_size))
        h = _Trunk(self.depth, self.heads, self.mlp_dim, name="trunk")(h)
        return dense(self.z_dim, ("embed", None), name="to_z")(h)


class ViTDecoder(nn.Module):
    """[B, h, w, z_dim] -> [B, h*p, w*p, out_channels]."""

    patch_size: int = 8
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 512
    out_channels: int = 3

    @property
    def upsample_factor(self) -> int:
        return self.patch_size

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = dense(self.width, (None, "embed"), name="from_z")(z)
        h = _Trunk(self.depth, self.heads, self.mlp_dim, name="trunk")(h)
        p = self.patch_size
        h = dense(p * p * self.out_channels, ("embed", None), name="to_patches")(h)
        return unpatchify(h, p, self.out_channels).astype(jnp.float32)
