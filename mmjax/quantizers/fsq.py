"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE
Made Simple"): each channel is bounded and rounded to one of L_i levels; the implicit
codebook is the product grid, of size prod(levels)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.quantizers.output import QuantizerOutput
from mmjax.quantizers.stats import code_usage_metrics
from mmjax.quantizers.straight_through import sg
from mmjax.quantizers.validation import (
    check_index_range,
    check_indices,
    check_input,
    check_positive_int,
    finite_rows,
    nonfinite_fraction,
    valid_indices,
)

# The paper's recommended levels for a target codebook size of 2^bits (its Table 1).
FSQ_LEVELS = {
    8: (8, 6, 5),
    10: (8, 5, 5, 5),
    12: (7, 5, 5, 5, 5),
    14: (8, 8, 8, 6, 5),
    16: (8, 8, 8, 5, 5, 5),
}


class FSQ(nn.Module):
    """Finite scalar quantizer.

    Attributes:
      levels: number of levels per channel, each >= 2 (e.g. FSQ_LEVELS[10]).
      dim: last dimension of the input; if set and != len(levels), z is projected to
        len(levels) channels and back (Dense layers).
      eps: shrinks the bound slightly so that tanh never reaches a half-integer.

    Codes are the rounded levels rescaled to [-1, 1] (level / (L // 2)). The loss is 0:
    FSQ needs no commitment or codebook terms. An input vector with a NaN or inf entry
    gets index -1 and a NaN `quantized` row (tanh would quietly saturate an inf), and is
    counted in `metrics["nonfinite_inputs"]` (a fraction).
    """

    levels: tuple[int, ...]
    dim: int | None = None
    eps: float = 1e-3

    def __post_init__(self):
        owner = type(self).__name__
        if len(self.levels) < 1:
            raise ValueError(f"{owner}: levels must list at least one channel, got {self.levels}")
        for i, level in enumerate(self.levels):
            check_positive_int(owner, f"levels[{i}]", level, minimum=2)
        if self.dim is not None:
            check_positive_int(owner, "dim", self.dim)
        if self.codebook_size > 2**31 - 1:
            raise ValueError(f"{owner}: prod(levels) must fit in int32, got {self.codebook_size}")
        super().__post_init__()

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    @property
    def _in_dim(self) -> int:
        return self.dim or len(self.levels)

    @property
    def _projected(self) -> bool:
        return self._in_dim != len(self.levels)

    def setup(self):
        if self._projected:
            self.project_in = nn.Dense(len(self.levels), dtype=jnp.float32)
            self.project_out = nn.Dense(self._in_dim, dtype=jnp.float32)

    def _consts(self):
        levels = jnp.asarray(self.levels, jnp.float32)
        half_width = jnp.asarray([lv // 2 for lv in self.levels], jnp.float32)
        basis = [1]
        for lv in self.levels[:-1]:
            basis.append(basis[-1] * lv)
        return levels, half_width, jnp.asarray(basis, jnp.int32)

    def bound(self, z: jax.Array) -> jax.Array:
        """Maps R to (-L/2, L/2) (shifted by 1/2 for even L) so rounding gives L values."""
        levels, _, _ = self._consts()
        half_l = (levels - 1.0) * (1.0 + self.eps) / 2.0
        offset = jnp.where(levels % 2 == 0, 0.5, 0.0)
        shift = jnp.arctanh(offset / half_l)
        return jnp.tanh(z + shift) * half_l - offset

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        """Codes on the grid [..., len(levels)] -> int32 indices (mixed radix)."""
        _, half_width, basis = self._consts()
        digits = jnp.round(codes * half_width + half_width).astype(jnp.int32)
        return jnp.sum(digits * basis, axis=-1).astype(jnp.int32)

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        """int indices -> codes [..., len(levels)] in [-1, 1] (before any projection);
        NaN codes for indices outside [0, codebook_size)."""
        levels, half_width, basis = self._consts()
        digits = (indices[..., None] // basis) % levels.astype(jnp.int32)
        codes = (digits.astype(jnp.float32) - half_width) / half_width
        return jnp.where(valid_indices(indices, self.codebook_size)[..., None], codes, jnp.nan)

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        del train  # FSQ has no state to update
        check_input(type(self).__name__, z, self._in_dim)
        x = z.astype(jnp.float32)
        if self._projected:
            x = self.project_in(x)
        bounded = self.bound(x)
        rounded = bounded + sg(jnp.round(bounded) - bounded)  # straight-through rounding
        _, half_width, _ = self._consts()
        finite = finite_rows(x)
        codes = jnp.where(finite[..., None], rounded / half_width, jnp.nan)
        idx = jnp.where(finite, self.codes_to_indices(sg(codes)), -1)
        out = self.project_out(codes) if self._projected else codes
        metrics = code_usage_metrics(idx, self.codebook_size)
        metrics["nonfinite_inputs"] = nonfinite_fraction(idx)
        return QuantizerOutput(
            quantized=out.astype(z.dtype),
            indices=idx,
            loss=jnp.zeros((), jnp.float32),
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
        codes = self.indices_to_codes(jnp.asarray(indices))
        return self.project_out(codes) if self._projected else codes
