"""ViT encoder and decoder (ViT-VQGAN, Yu et al. 2022): patchify, pre-LN transformer blocks
with fixed 2D sin-cos positions, and a linear map to the quantizer's input width.

ViT-VQGAN's factorized low-dimensional codes are the quantizer's business (VectorQuantizer's
`codebook_dim`); here `z_dim` is just the width handed to the quantizer.

Options (defaults keep the layout above) express ml-4m's ViT VQ-VAE exactly: learned position
tables (`pos_emb="learned"`), no final LayerNorm (`final_norm=False`), ViT-VQGAN's tanh MLP
after the blocks (`post_mlp`) and a bias-free input embedding of one-hot class maps
(`in_embed_dim`).
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


POS_EMBS = ("sincos", "learned")


class _PostMlp(nn.Module):
    """x + fc2(tanh(fc1(LN(x)))): ViT-VQGAN's MLP after the transformer blocks."""

    hidden_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = layer_norm(name="norm")(x)
        h = jnp.tanh(dense(self.hidden_dim, ("embed", "mlp"), name="fc1")(h))
        return x + dense(x.shape[-1], ("mlp", "embed"), name="fc2")(h)


class _Trunk(nn.Module):
    """Positions + `depth` pre-LN blocks [+ tanh post-MLP] [+ final LayerNorm] on a
    [B, h, w, width] grid. pos_emb "learned": a [h, w, width] parameter `pos_emb` (the grid
    is fixed by the input given to `init`)."""

    depth: int
    heads: int
    mlp_dim: int
    final_norm: bool = True
    pos_emb: str = "sincos"
    post_mlp: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, d = x.shape
        if self.pos_emb == "learned":
            init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed"))
            table = self.param("pos_emb", init, (h, w, d))
        elif self.pos_emb == "sincos":
            table = sincos_2d(h, w, d)
        else:
            raise ValueError(f"ViT: pos_emb must be one of {POS_EMBS}, got {self.pos_emb!r}")
        t = x.reshape(b, h * w, d) + jnp.asarray(table, x.dtype).reshape(1, h * w, d)
        for i in range(self.depth):
            t = TransformerBlock(self.heads, self.mlp_dim, name=f"block_{i}")(t)
        if self.post_mlp:
            t = _PostMlp(self.mlp_dim, name="post_mlp")(t)
        if self.final_norm:
            t = layer_norm(name="norm_out")(t)
        return t.reshape(b, h, w, d)


class ViTEncoder(nn.Module):
    """[B, H, W, C_in] -> [B, H/p, W/p, z_dim]; H and W must be multiples of patch_size.

    Attributes: patch_size, width, depth, heads, mlp_dim (the transformer), z_dim (output);
    final_norm, pos_emb ("sincos" or "learned"), post_mlp: see `_Trunk`; in_embed_dim: if
    set, a bias-free Dense(in_embed_dim) on the input channels before patchifying (a class
    embedding table when the input is one-hot).
    """

    patch_size: int = 8
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 512
    z_dim: int = 32
    final_norm: bool = True
    pos_emb: str = "sincos"
    post_mlp: bool = False
    in_embed_dim: int | None = None

    @property
    def downsample_factor(self) -> int:
        return self.patch_size

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.in_embed_dim is not None:
            x = dense(self.in_embed_dim, (None, None), use_bias=False, name="in_embed")(x)
        h = dense(self.width, (None, "embed"), name="patch_embed")(patchify(x, self.patch_size))
        h = _Trunk(
            self.depth, self.heads, self.mlp_dim, self.final_norm, self.pos_emb, self.post_mlp,
            name="trunk",
        )(h)  # fmt: skip
        return dense(self.z_dim, ("embed", None), name="to_z")(h)


class ViTDecoder(nn.Module):
    """[B, h, w, z_dim] -> [B, h*p, w*p, out_channels]; final_norm, pos_emb, post_mlp as in
    ViTEncoder."""

    patch_size: int = 8
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 512
    out_channels: int = 3
    final_norm: bool = True
    pos_emb: str = "sincos"
    post_mlp: bool = False

    @property
    def upsample_factor(self) -> int:
        return self.patch_size

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = dense(self.width, (None, "embed"), name="from_z")(z)
        h = _Trunk(
            self.depth, self.heads, self.mlp_dim, self.final_norm, self.pos_emb, self.post_mlp,
            name="trunk",
        )(h)  # fmt: skip
        p = self.patch_size
        h = dense(p * p * self.out_channels, ("embed", None), name="to_patches")(h)
        return unpatchify(h, p, self.out_channels).astype(jnp.float32)
