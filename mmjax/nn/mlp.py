"""Dense layers with logical axis names, a GELU MLP and SwiGLU.

Every parameter is created through `nn.with_logical_partitioning`, so that
`nn.get_partition_spec` and the rules in `mmjax.parallel` can shard it.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype | None
DEFAULT_KERNEL_INIT = nn.initializers.xavier_uniform()


def dense(
    features: int | Sequence[int],
    kernel_axes: tuple[str | None, ...],
    *,
    axis: int | Sequence[int] = -1,
    use_bias: bool = True,
    dtype: Dtype = None,
    kernel_init: Callable = DEFAULT_KERNEL_INIT,
    name: str | None = None,
    param_dtype: jnp.dtype = jnp.float32,
) -> nn.DenseGeneral:
    """A DenseGeneral whose kernel carries `kernel_axes` (input axes then output axes)
    and whose bias carries the output axes."""
    n_out = 1 if isinstance(features, int) else len(features)
    return nn.DenseGeneral(
        features=features,
        axis=axis,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, kernel_axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, kernel_axes[-n_out:]),
        name=name,
    )


def layer_norm(
    axis_name: str | None = "embed",
    dtype: Dtype = None,
    name: str | None = None,
    *,
    use_bias: bool = True,
    param_dtype: jnp.dtype = jnp.float32,
) -> nn.LayerNorm:
    """LayerNorm with scale and bias named `(axis_name,)`; `use_bias=False` drops the bias
    (4M's trunk has no biases anywhere)."""
    return nn.LayerNorm(
        epsilon=1e-6,
        dtype=dtype,
        param_dtype=param_dtype,
        use_bias=use_bias,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis_name,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,)),
        name=name,
    )


class Mlp(nn.Module):
    """x -> Dense(hidden) -> GELU -> Dense(out). Kernels [embed, mlp] and [mlp, embed]."""

    hidden_dim: int
    out_dim: int | None = None
    use_bias: bool = True
    dtype: Dtype = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_dim = self.out_dim or x.shape[-1]
        kw = {"use_bias": self.use_bias, "dtype": self.dtype, "param_dtype": self.param_dtype}
        h = dense(self.hidden_dim, ("embed", "mlp"), name="fc1", **kw)(x)
        h = nn.gelu(h, approximate=False)
        return dense(out_dim, ("mlp", "embed"), name="fc2", **kw)(h)


class SwiGLU(nn.Module):
    """Shazeer's gated MLP: W_out (silu(x W_gate) * (x W_up)), no biases by default."""

    hidden_dim: int
    out_dim: int | None = None
    use_bias: bool = False
    dtype: Dtype = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_dim = self.out_dim or x.shape[-1]
        kw = {"use_bias": self.use_bias, "dtype": self.dtype, "param_dtype": self.param_dtype}
        gate = dense(self.hidden_dim, ("embed", "mlp"), name="gate", **kw)(x)
        up = dense(self.hidden_dim, ("embed", "mlp"), name="up", **kw)(x)
        return dense(out_dim, ("mlp", "embed"), name="down", **kw)(nn.silu(gate) * up)
