"""Gradient estimators that pass gradients from quantized codes back to the inputs."""

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


def straight_through(z: jax.Array, codes: jax.Array) -> jax.Array:
    """Forward: `codes`; backward: identity to `z` (Bengio et al., VQ-VAE)."""
    return z + sg(codes - z)


def rotation_trick(z: jax.Array, codes: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Forward: `codes`; backward: through the rotation + rescaling that maps z to codes.

    Fifty et al. 2024, "Restructuring Vector Quantization with the Rotation Trick":
    q = sg(lambda R) z with R the rotation taking z/|z| onto c/|c| (in the plane they
    span) and lambda = |c| / |z|. R z = z - 2 r (r.z) + 2 c_hat (z_hat.z), with
    r = (z_hat + c_hat) / |z_hat + c_hat|. Rows are the last axis.
    """
    z_norm = jnp.linalg.norm(z, axis=-1, keepdims=True)
    c_norm = jnp.linalg.norm(codes, axis=-1, keepdims=True)
    z_hat = sg(z / jnp.maximum(z_norm, eps))
    c_hat = sg(codes / jnp.maximum(c_norm, eps))
    r = z_hat + c_hat
    r = sg(r / jnp.maximum(jnp.linalg.norm(r, axis=-1, keepdims=True), eps))
    scale = sg(c_norm / jnp.maximum(z_norm, eps))
    rotated = (
        z
        - 2.0 * r * jnp.sum(r * z, axis=-1, keepdims=True)
        + 2.0 * c_hat * jnp.sum(z_hat * z, axis=-1, keepdims=True)
    )
    q = scale * rotated
    # The forward value is exactly the code; rounding in the rotation is removed here
    # without touching the gradient path.
    return q + sg(codes - q)
