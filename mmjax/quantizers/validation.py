"""Argument and input checks shared by the quantizers (clear errors naming the culprit), and
their rules for out-of-range indices and non-finite inputs."""

import jax
import jax.numpy as jnp
import numpy as np


def check_positive_int(owner: str, name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")


def check_choice(owner: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {tuple(choices)}, got {value!r}")


def check_range(owner: str, name: str, value, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{owner}: {name} must lie in [{low}, {high}], got {value!r}")


def check_input(owner: str, z, dim: int) -> None:
    """`z` must be a float array [..., dim]."""
    if not hasattr(z, "dtype") or not hasattr(z, "shape"):
        raise TypeError(f"{owner}: z must be an array [..., {dim}], got {type(z).__name__}")
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise TypeError(f"{owner}: z must be a float array, got dtype {z.dtype}")
    if z.ndim < 1 or z.shape[-1] != dim:
        raise ValueError(f"{owner}: z must have shape [..., {dim}] (dim={dim}), got {z.shape}")


def check_indices(owner: str, indices) -> None:
    if not hasattr(indices, "dtype") or not jnp.issubdtype(indices.dtype, jnp.integer):
        got = getattr(indices, "dtype", type(indices).__name__)
        raise TypeError(f"{owner}: indices must be an integer array, got {got}")


def valid_indices(indices: jax.Array, codebook_size: int) -> jax.Array:
    """bool mask of the indices that name a code, i.e. lie in [0, codebook_size).

    Works on traced values; inside `jit`, `decode_indices` decodes the others to NaN."""
    indices = jnp.asarray(indices)
    return (indices >= 0) & (indices < codebook_size)


def check_index_range(owner: str, name: str, indices, codebook_size: int) -> None:
    """Concrete indices (numpy, or jax arrays outside a trace) must lie in
    [0, codebook_size); traced indices are not checked here (see `valid_indices`)."""
    if isinstance(indices, jax.core.Tracer) or np.size(indices) == 0:
        return
    if isinstance(indices, jax.Array):
        low, high = int(jnp.min(indices)), int(jnp.max(indices))
    else:
        a = np.asarray(indices)
        low, high = int(a.min()), int(a.max())
    if low < 0 or high >= codebook_size:
        hint = "; -1 marks an input vector that was not finite" if low == -1 else ""
        raise ValueError(
            f"{owner}: {name} must lie in [0, {codebook_size}) (codebook_size="
            f"{codebook_size}), got values in [{low}, {high}]{hint}"
        )


def lookup_codes(codebook: jax.Array, indices: jax.Array) -> jax.Array:
    """codebook[indices] with NaN codes for indices outside [0, K) (never a wrapped-around
    code for -1, as plain jnp indexing would give)."""
    k = codebook.shape[0]
    ok = valid_indices(indices, k)
    codes = jnp.take(codebook, jnp.clip(indices, 0, k - 1), axis=0)
    return jnp.where(ok[..., None], codes, jnp.nan).astype(codebook.dtype)


def finite_rows(x: jax.Array) -> jax.Array:
    """bool [...]: True where the vector x[..., :] has no NaN or inf."""
    return jnp.all(jnp.isfinite(x), axis=-1)


def nonfinite_fraction(indices: jax.Array) -> jax.Array:
    """The `nonfinite_inputs` metric: fraction of vectors that got index -1 (a NaN or inf
    input, or for VQ a non-finite codebook), float32."""
    return jnp.mean((indices < 0).astype(jnp.float32))
