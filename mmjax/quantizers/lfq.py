"""Lookup-free quantization (MAGVIT-v2, Yu et al. 2023) and binary spherical quantization
(BSQ, Zhao et al. 2024): each channel is quantized to its sign, so the implicit codebook is
{-s, s}^d with 2^d entries and no lookup."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.quantizers.output import QuantizerOutput
from mmjax.quantizers.stats import binary_entropy, code_usage_metrics, entropy_penalty
from mmjax.quantizers.straight_through import sg, straight_through
from mmjax.quantizers.validation import (
    check_choice,
    check_index_range,
    check_indices,
    check_input,
    check_positive_int,
    finite_rows,
    nonfinite_fraction,
    valid_indices,
)

# Up to this many bits the entropy loss enumerates all 2^d codes ("exact" mode).
EXACT_ENTROPY_MAX_DIM = 12


class LFQ(nn.Module):
    """Binary (lookup-free) quantizer.

    Attributes:
      dim: number of bits d; codebook_size = 2^d (d <= 30 for int32 indices).
      spherical: BSQ: z is l2-normalized and codes are sign(z) / sqrt(d), on the unit
        sphere. Otherwise codes are sign(z) * codebook_scale.
      codebook_scale: code magnitude s for plain LFQ.
      commitment_weight: beta * mean((z - sg(code))^2).
      entropy_weight: weight of MAGVIT-v2's entropy loss
        E[H(p(c|z))] - diversity_gamma * H(E[p(c|z)]), p(c|z) = softmax(-|z - c|^2 / T).
      entropy_temperature: T.
      entropy_mode: "exact" (all 2^d codes, d <= 12), "factorized" (per-bit; the
        per-sample term is still exact, the batch term is the sum of per-bit entropies,
        an upper bound as in BSQ), or "auto" (exact up to d = 12).

    Index of a code: sum_i [bit_i > 0] 2^i. An input vector with a NaN or inf entry gets
    index -1 (a NaN has no sign) and a NaN `quantized` row, and is counted in
    `metrics["nonfinite_inputs"]` (a fraction).
    """

    dim: int
    spherical: bool = False
    codebook_scale: float = 1.0
    commitment_weight: float = 0.25
    entropy_weight: float = 0.1
    diversity_gamma: float = 1.0
    entropy_temperature: float = 0.01
    entropy_mode: str = "auto"

    def __post_init__(self):
        owner = type(self).__name__
        check_positive_int(owner, "dim", self.dim)
        if self.dim > 30:
            raise ValueError(f"{owner}: dim must be <= 30 (int32 indices), got {self.dim}")
        check_choice(owner, "entropy_mode", self.entropy_mode, ("auto", "exact", "factorized"))
        if self.entropy_mode == "exact" and self.dim > EXACT_ENTROPY_MAX_DIM:
            raise ValueError(
                f"{owner}: entropy_mode='exact' enumerates 2^dim codes; use dim <= "
                f"{EXACT_ENTROPY_MAX_DIM} or entropy_mode='factorized', got dim={self.dim}"
            )
        if self.entropy_temperature <= 0 or self.codebook_scale <= 0:
            raise ValueError(f"{owner}: entropy_temperature and codebook_scale must be > 0")
        super().__post_init__()

    @property
    def codebook_size(self) -> int:
        return 2**self.dim

    @property
    def scale(self) -> float:
        return self.dim**-0.5 if self.spherical else self.codebook_scale

    def _exact(self) -> bool:
        return self.entropy_mode == "exact" or (
            self.entropy_mode == "auto" and self.dim <= EXACT_ENTROPY_MAX_DIM
        )

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        """int indices -> codes [..., dim]; NaN codes for indices outside [0, 2^dim)."""
        bits = (indices[..., None] >> jnp.arange(self.dim, dtype=jnp.int32)) & 1
        codes = jnp.where(bits > 0, self.scale, -self.scale).astype(jnp.float32)
        return jnp.where(valid_indices(indices, self.codebook_size)[..., None], codes, jnp.nan)

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        weights = 2 ** jnp.arange(self.dim, dtype=jnp.int32)
        return jnp.sum(jnp.where(codes > 0, weights, 0), axis=-1).astype(jnp.int32)

    def entropy_terms(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mean per-sample entropy, batch entropy) of p(c|x) for x [N, d] (already
        normalized for BSQ)."""
        s, t = self.scale, self.entropy_temperature
        if self._exact():
            # -|x - c|^2 / T = (2 x.c - |x|^2 - |c|^2) / T; the last two are constant per row.
            all_codes = self.indices_to_codes(jnp.arange(self.codebook_size, dtype=jnp.int32))
            return entropy_penalty(2.0 * (x @ all_codes.T) / t)
        # The distance splits over bits, so p(c|x) is a product of Bernoullis with
        # p(bit_i = +) = sigmoid(4 s x_i / T).
        p_plus = jax.nn.sigmoid(4.0 * s * x / t)
        per_sample = jnp.mean(jnp.sum(binary_entropy(p_plus), axis=-1))
        batch = jnp.sum(binary_entropy(jnp.mean(p_plus, axis=0)))
        return per_sample, batch

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        del train  # LFQ has no state to update
        check_input(type(self).__name__, z, self.dim)
        x = z.astype(jnp.float32)
        if self.spherical:
            x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        finite = finite_rows(x)
        codes = jnp.where(x > 0, self.scale, -self.scale)
        idx = jnp.where(finite, self.codes_to_indices(codes), -1)
        codes = jnp.where(finite[..., None], codes, jnp.nan)
        loss = self.commitment_weight * jnp.mean(jnp.square(x - sg(codes)))
        metrics = code_usage_metrics(idx, self.codebook_size)
        metrics["nonfinite_inputs"] = nonfinite_fraction(idx)
        if self.entropy_weight > 0:
            per_sample, batch = self.entropy_terms(x.reshape(-1, self.dim))
            loss += self.entropy_weight * (per_sample - self.diversity_gamma * batch)
            metrics.update(entropy_per_sample=per_sample, entropy_batch=batch)
        return QuantizerOutput(
            quantized=straight_through(x, codes).astype(z.dtype),
            indices=idx,
            loss=loss,
            metrics=metrics,
        )

    def decode_indices(self, indices: jax.Array) -> jax.Array:
        """Codes for int indices [...] -> [..., dim], as `__call__` produces them.

        Indices outside [0, codebook_size): a ValueError when they are concrete (eager
        calls, numpy arrays); inside `jit`, NaN codes (-1, the index of a non-finite
        input, decodes to NaN as `__call__` produced it). `valid_indices` gives the mask.
        """
        check_indices(type(self).__name__, indices)
        check_index_range(type(self).__name__, "indices", indices, self.codebook_size)
        return self.indices_to_codes(jnp.asarray(indices))
