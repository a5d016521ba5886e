"""Argument and input checks shared by the quantizers: clear errors naming the culprit."""

import jax.numpy as jnp


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
