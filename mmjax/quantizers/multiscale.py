"""Multi-scale residual quantization (VAR, Tian et al. 2024): a feature map is quantized
as a pyramid of token maps, coarse to fine; each scale quantizes the downsampled residual
that the coarser scales left, and its codes are upsampled back and subtracted.
(VAR's extra convolution on the upsampled codes is not included.)"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.quantizers.output import QuantizerOutput
from mmjax.quantizers.residual import level_metrics
from mmjax.quantizers.straight_through import sg, straight_through
from mmjax.quantizers.validation import (
    check_choice,
    check_index_range,
    check_indices,
    check_positive_int,
)


def resize(x: jax.Array, size: int, method: str) -> jax.Array:
    """[B, H, W, D] -> [B, size, size, D]. Downsampling by an integer factor is an exact
    average pool (area); other sizes use antialiased linear interpolation."""
    b, h, w, d = x.shape
    if size == h:
        return x
    if size < h and h % size == 0 and w % size == 0:
        return x.reshape(b, size, h // size, size, w // size, d).mean(axis=(2, 4))
    return jax.image.resize(x, (b, size, size, d), method=method)


class MultiScaleResidualQuantizer(nn.Module):
    """VAR-style multi-scale residual quantizer for square maps [B, S, S, D].

    Attributes:
      quantizer: base quantizer template (VAR shares one codebook over all scales).
      scales: increasing side lengths, the last equal to the map's side S,
        e.g. (1, 2, 3, 4, 6, 8, 10, 13, 16).
      shared_codebook: one codebook for all scales (default, as VAR) or one per scale.
      upsample: "linear" or "nearest" interpolation of codes back to S x S (VAR uses
        bicubic; "cubic" also works).

    indices: [B, sum(s*s)] int32, the scales' token maps flattened coarse to fine
    (VAR's token sequence).
    """

    quantizer: nn.Module
    scales: tuple[int, ...]
    shared_codebook: bool = True
    upsample: str = "linear"

    def __post_init__(self):
        owner = type(self).__name__
        if len(self.scales) < 1:
            raise ValueError(f"{owner}: scales must list at least one side length")
        for i, s in enumerate(self.scales):
            check_positive_int(owner, f"scales[{i}]", s)
        if list(self.scales) != sorted(set(self.scales)):
            raise ValueError(f"{owner}: scales must be strictly increasing, got {self.scales}")
        check_choice(owner, "upsample", self.upsample, ("linear", "nearest", "cubic"))
        super().__post_init__()

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def num_tokens(self) -> int:
        return sum(s * s for s in self.scales)

    def setup(self):
        n = 1 if self.shared_codebook else len(self.scales)
        self.levels = [self.quantizer.clone(name=None) for _ in range(n)]

    def level(self, i: int) -> nn.Module:
        return self.levels[0 if self.shared_codebook else i]

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        side = self.scales[-1]
        if z.ndim != 4 or z.shape[1] != side or z.shape[2] != side:
            raise ValueError(
                f"{type(self).__name__}: z must have shape [B, {side}, {side}, D] "
                f"(scales[-1]={side}), got {getattr(z, 'shape', None)}"
            )
        z32 = z.astype(jnp.float32)
        residual, total, loss = z32, jnp.zeros_like(z32), jnp.zeros((), jnp.float32)
        indices, metrics = [], []
        for i, s in enumerate(self.scales):
            out = self.level(i)(resize(residual, s, "linear"), train=train)
            codes = resize(sg(out.quantized.astype(jnp.float32)), side, self.upsample)
            total = total + codes
            loss = loss + out.loss
            residual = residual - codes
            indices.append(out.indices.reshape(z.shape[0], s * s))
            metrics.append(out.metrics)
        return QuantizerOutput(
            quantized=straight_through(z32, total).astype(z.dtype),
            indices=jnp.concatenate(indices, axis=1),
            loss=loss,
            metrics=level_metrics(metrics),
        )

    def split_indices(self, indices: jax.Array) -> list[jax.Array]:
        """[B, sum(s*s)] -> the per-scale token maps [B, s, s]."""
        maps, start = [], 0
        for s in self.scales:
            maps.append(indices[:, start : start + s * s].reshape(-1, s, s))
            start += s * s
        return maps

    def decode_indices(self, indices: jax.Array) -> jax.Array:
        """[B, sum(s*s)] -> [B, S, S, D]: the sum of the scales' upsampled codes.

        Indices outside [0, codebook_size): a ValueError when they are concrete; inside
        `jit`, NaN codes (see `VectorQuantizer.decode_indices`).
        """
        owner = type(self).__name__
        check_indices(owner, indices)
        if indices.ndim != 2 or indices.shape[1] != self.num_tokens:
            raise ValueError(
                f"{owner}: indices must have shape [B, {self.num_tokens}], got {indices.shape}"
            )
        check_index_range(owner, "indices", indices, self.codebook_size)
        side = self.scales[-1]
        return sum(
            resize(self.level(i).decode_indices(m).astype(jnp.float32), side, self.upsample)
            for i, m in enumerate(self.split_indices(indices))
        )
