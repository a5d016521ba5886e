"""Residual (stacked) quantization: each level quantizes what the previous levels left.

RVQ as in SoundStream / ResGen, UniCode's stacked quantization: any base quantizer (VQ,
FSQ, LFQ) repeated `depth` times, with shared or separate codebooks and quantize-dropout.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.quantizers.output import QuantizerOutput
from mmjax.quantizers.straight_through import sg, straight_through
from mmjax.quantizers.validation import (
    check_index_range,
    check_indices,
    check_positive_int,
    check_range,
)

DROPOUT_RNG = "quantizer"


def level_metrics(per_level: list[dict]) -> dict:
    """Averages each metric over levels and keeps the per-level values as `name_level{i}`."""
    out = {}
    for name in per_level[0]:
        values = [m[name] for m in per_level]
        out[name] = jnp.mean(jnp.stack(values))
        out.update({f"{name}_level{i}": v for i, v in enumerate(values)})
    return out


class ResidualQuantizer(nn.Module):
    """Residual quantizer over `depth` levels of a base quantizer.

    Attributes:
      quantizer: the base quantizer, an unbound module used as a template (cloned per
        level, or once when shared_codebook).
      depth: number of levels.
      shared_codebook: one base quantizer (one codebook) for every level.
      dropout_prob: in training, with this probability keep only the first d levels,
        d uniform in [dropout_min_depth, depth] (SoundStream's quantizer dropout), so
        that decoding from a prefix of the levels works. Needs rngs={"quantizer": key}.
      dropout_min_depth: the smallest d kept by quantize-dropout.

    indices: [..., depth] int32. quantized = straight-through sum of the level codes.
    loss: sum of the levels' losses. Metrics: each averaged over levels, plus per level.
    A non-finite input vector gets -1 at every level and a NaN `quantized` row.
    """

    quantizer: nn.Module
    depth: int
    shared_codebook: bool = False
    dropout_prob: float = 0.0
    dropout_min_depth: int = 1

    def __post_init__(self):
        owner = type(self).__name__
        check_positive_int(owner, "depth", self.depth)
        check_range(owner, "dropout_prob", self.dropout_prob, 0.0, 1.0)
        check_range(owner, "dropout_min_depth", self.dropout_min_depth, 1, self.depth)
        super().__post_init__()

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def setup(self):
        n = 1 if self.shared_codebook else self.depth
        self.levels = [self.quantizer.clone(name=None) for _ in range(n)]

    def level(self, i: int) -> nn.Module:
        return self.levels[0 if self.shared_codebook else i]

    def _kept_depth(self, train: bool) -> jax.Array | int:
        if not train or self.dropout_prob == 0.0 or self.is_initializing():
            return self.depth
        if not self.has_rng(DROPOUT_RNG):
            raise ValueError(
                f"{type(self).__name__}: dropout_prob > 0 needs a PRNG key in training: "
                f"apply(..., rngs={{'{DROPOUT_RNG}': key}})"
            )
        k_drop, k_depth = jax.random.split(self.make_rng(DROPOUT_RNG))
        drop = jax.random.bernoulli(k_drop, self.dropout_prob)
        d = jax.random.randint(k_depth, (), self.dropout_min_depth, self.depth + 1)
        return jnp.where(drop, d, self.depth)

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        kept = self._kept_depth(train)
        z32 = z.astype(jnp.float32)
        residual, total, loss = z32, jnp.zeros_like(z32), jnp.zeros((), jnp.float32)
        indices, metrics = [], []
        for i in range(self.depth):
            out = self.level(i)(residual, train=train)
            codes = sg(out.quantized.astype(jnp.float32))
            keep = jnp.asarray(i < kept, jnp.float32)
            total = total + keep * codes
            loss = loss + keep * out.loss
            # The residual keeps its gradient path to z, so every level's commitment
            # loss trains the encoder; the codes are constants here.
            residual = residual - codes
            indices.append(out.indices)
            metrics.append(out.metrics)
        return QuantizerOutput(
            quantized=straight_through(z32, total).astype(z.dtype),
            indices=jnp.stack(indices, axis=-1),
            loss=loss,
            metrics=level_metrics(metrics),
        )

    def decode_indices(self, indices: jax.Array) -> jax.Array:
        """[..., depth] -> [..., dim]: the sum of the levels' codes. A shorter last axis
        decodes that many leading levels (coarse reconstruction).

        Indices outside [0, codebook_size) at any level: a ValueError naming the level when
        they are concrete; inside `jit`, NaN codes (see `VectorQuantizer.decode_indices`).
        """
        owner = type(self).__name__
        check_indices(owner, indices)
        if not 1 <= indices.shape[-1] <= self.depth:
            raise ValueError(
                f"{owner}: indices must have a trailing depth axis of size "
                f"1..{self.depth}, got shape {indices.shape}"
            )
        for i in range(indices.shape[-1]):
            name = f"indices[..., {i}] (level {i})"
            check_index_range(owner, name, indices[..., i], self.codebook_size)
        return sum(
            self.level(i).decode_indices(indices[..., i]).astype(jnp.float32)
            for i in range(indices.shape[-1])
        )
