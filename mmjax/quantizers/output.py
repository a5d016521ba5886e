"""What every quantizer returns, and the variable collection for its statistics."""

import flax.struct
import jax

# EMA statistics, EMA codebooks and restart offsets live here, never in `params`, so that
# optimizers and weight decay do not touch them. Apply with `mutable=[STATS]` in training.
STATS = "quantizer_stats"


@flax.struct.dataclass
class QuantizerOutput:
    """Result of `quantizer(z, train)`.

    quantized: codes with a straight-through (or rotation-trick) gradient, shape and
      dtype of `z`.
    indices: int32 code indices, `z.shape[:-1]` (residual quantizers add a trailing
      depth axis; the multi-scale quantizer returns `[B, sum(s*s)]`).
    loss: float32 scalar, already weighted (commitment, codebook, entropy terms).
    metrics: dict of float32 scalars, at least `usage` and `perplexity`.
    """

    quantized: jax.Array
    indices: jax.Array
    loss: jax.Array
    metrics: dict
