"""PatchGAN discriminator and the VQGAN adversarial-loss helpers.

The discriminator (Isola et al. 2017, as in VQGAN) maps [B, H, W, C] to a map of patch
logits. VQGAN weights the generator's GAN loss adaptively,
  lambda = |grad_L L_rec| / (|grad_L L_gan| + 1e-4), clipped to [0, max_weight],
with both gradients taken w.r.t. the decoder's last layer L, and switches the GAN term on
only from a start step.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.tokenizers.conv import CONV_AXES


class PatchDiscriminator(nn.Module):
    """4x4 convs: stride 2 for the first `num_layers`, then two stride-1 convs; LeakyReLU(0.2)
    and GroupNorm (no batch statistics, so it shards and jits like everything else).
    Output: logits [B, H / 2^num_layers, W / 2^num_layers, 1]."""

    channels: int = 64
    num_layers: int = 3
    groups: int = 32

    def _conv(self, features: int, stride: int, name: str) -> nn.Conv:
        return nn.Conv(
            features,
            (4, 4),
            strides=(stride, stride),
            padding="SAME",
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), CONV_AXES),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name=name,
        )

    def _norm(self, features: int, name: str) -> nn.GroupNorm:
        return nn.GroupNorm(
            num_groups=math.gcd(self.groups, features),
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name=name,
        )

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"PatchDiscriminator: input must be [B, H, W, C], got {x.shape}")
        h = nn.leaky_relu(self._conv(self.channels, 2, "conv_0")(x), 0.2)
        for i in range(1, self.num_layers + 1):
            features = self.channels * min(2**i, 8)
            stride = 2 if i < self.num_layers else 1
            h = self._conv(features, stride, f"conv_{i}")(h)
            h = nn.leaky_relu(self._norm(features, f"norm_{i}")(h), 0.2)
        return self._conv(1, 1, "logits")(h).astype(jnp.float32)


def d_hinge_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """0.5 * (mean(relu(1 - D(real))) + mean(relu(1 + D(fake))))."""
    return 0.5 * (
        jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
    )


def g_hinge_loss(fake_logits: jax.Array) -> jax.Array:
    """-mean(D(fake))."""
    return -jnp.mean(fake_logits)


def adaptive_weight(rec_grad_norm, gan_grad_norm, max_weight: float = 1e4) -> jax.Array:
    """VQGAN's lambda = |grad rec| / (|grad gan| + 1e-4), clipped to [0, max_weight], with no
    gradient of its own."""
    w = jnp.asarray(rec_grad_norm, jnp.float32) / (jnp.asarray(gan_grad_norm, jnp.float32) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))


def adaptive_weight_from_grads(rec_grads, gan_grads, max_weight: float = 1e4) -> jax.Array:
    """`adaptive_weight` from the two gradient pytrees w.r.t. the decoder's last layer
    (e.g. grads["decoder"]["conv_out"]); norms are global l2 norms over the pytree."""
    return adaptive_weight(optax.tree.norm(rec_grads), optax.tree.norm(gan_grads), max_weight)


def gan_start_step(step, start_step: int, weight: float = 1.0) -> jax.Array:
    """The GAN loss weight at `step`: 0 before `start_step`, `weight` from it on (jit-safe)."""
    return jnp.where(jnp.asarray(step) >= start_step, weight, 0.0).astype(jnp.float32)
