"""A patch-local encoder: every latent depends on its own f x f input patch and nothing else.

[B, H, W, C] -> patches [B, H/f, W/f, f*f*C] (the ViT's `patchify`) -> per-patch MLP
(pre-LayerNorm residual blocks; norms over channels only, never over space)
-> [B, H/f, W/f, z_channels].

Why: a convolutional encoder's receptive field writes the surroundings into every code, so a
uniform patch of floor gets one of hundreds of codes depending on what is near it. For maps
that are targets of a generative model (depth, normals, semseg) that context is noise the
model has to predict; with this encoder equal patches always get equal codes. The decoder
stays convolutional, so reconstructions still use the neighbouring codes.
"""

import flax.linen as nn
import jax

from mmjax.nn import dense
from mmjax.tokenizers.vit import patchify


class PatchEncoder(nn.Module):
    """[B, H, W, C_in] -> [B, H/f, W/f, z_channels] with f = patch_size, patch by patch.

    Attributes:
      patch_size: f, the downsampling factor.
      width: hidden width of the per-patch MLP.
      depth: number of residual MLP blocks.
      z_channels: output (quantizer input) width.
    """

    patch_size: int = 8
    width: int = 128
    depth: int = 2
    z_channels: int = 8

    @property
    def downsample_factor(self) -> int:
        return int(self.patch_size)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = dense(self.width, (None, "embed"), name="embed")(patchify(x, self.patch_size))
        for i in range(self.depth):
            y = nn.LayerNorm(name=f"norm_{i}")(h)
            y = dense(2 * self.width, ("embed", "mlp"), name=f"fc1_{i}")(y)
            h = h + dense(self.width, ("mlp", "embed"), name=f"fc2_{i}")(nn.swish(y))
        h = nn.swish(nn.LayerNorm(name="norm_out")(h))
        return dense(self.z_channels, ("embed", None), name="out")(h)
