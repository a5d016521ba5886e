"""The MLP trunk of the flexible-length 1D tokenizer (`model.trunk="mlp"`): each of the K
tokens is its own readout of one hidden layer over the whole image, and the decoder maps the
K codes (dropped ones replaced by a learned per-position mask embedding) back through one
hidden layer to per-patch features. No attention: at the small budgets of a CPU it learns
the coarse-to-fine order of nested dropout within a few thousand steps, where the ViT trunk
of `mmjax.tokenizers.flex1d` still decodes near the mean image (docs/experiments.md).

Token i never reads another token, so the first k codes of an image are the same whether
it is encoded to k or to K tokens, as with causal registers.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import dense
from mmjax.tokenizers.flex1d import check_codes
from mmjax.tokenizers.vit import patchify, unpatchify


class Flex1DMlpEncoder(nn.Module):
    """[B, H, W, C] -> [B, k, z_dim]: the image's patches flattened, one GELU hidden layer of
    mlp_dim, then num_registers x z_dim outputs of which the first k are returned."""

    patch_size: int = 4
    mlp_dim: int = 1024
    z_dim: int = 32
    num_registers: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, num_tokens: int | None = None) -> jax.Array:
        k = self.num_registers if num_tokens is None else int(num_tokens)
        flat = patchify(x, self.patch_size).reshape(x.shape[0], -1)  # [B, N * p * p * C]
        h = nn.gelu(dense(self.mlp_dim, (None, "mlp"), name="hidden")(flat))
        z = dense((self.num_registers, self.z_dim), ("mlp", None, None), name="to_z")(h)
        return z[:, :k]  # [B, k, z_dim]


class Flex1DMlpDecoder(nn.Module):
    """([B, K, z_dim] codes, bool [B, K] kept) -> [B, image_size, image_size, out_channels]:
    dropped codes read as the learned `mask_token` of their position; the K codes flattened,
    one GELU hidden layer of mlp_dim, `width` features per output patch, and a per-patch GELU
    layer of 2 * width to the patch's pixels."""

    image_size: int = 32
    patch_size: int = 4
    width: int = 64
    mlp_dim: int = 1024
    out_channels: int = 3
    num_registers: int = 32

    @nn.compact
    def __call__(self, codes: jax.Array, kept: jax.Array) -> jax.Array:
        b, k = codes.shape[0], self.num_registers
        check_codes("Flex1DMlpDecoder", codes, kept, k)
        init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None))
        mask_token = self.param("mask_token", init, (k, codes.shape[-1]))
        codes = jnp.where(kept[..., None], codes, mask_token.astype(codes.dtype))
        h = nn.gelu(dense(self.mlp_dim, (None, "mlp"), name="hidden")(codes.reshape(b, -1)))
        g = self.image_size // self.patch_size
        h = dense((g * g, self.width), ("mlp", None, None), name="to_patches")(h)
        h = nn.gelu(dense(2 * self.width, (None, None), name="patch_hidden")(h))
        p = self.patch_size
        out = dense(p * p * self.out_channels, (None, None), name="patch_out")(h)
        return unpatchify(out.reshape(b, g, g, -1), p, self.out_channels).astype(jnp.float32)
