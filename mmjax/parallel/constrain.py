"""Sharding constraints on activations from their logical axis names."""

import jax

from mmjax.parallel.rules import logical_to_spec

# Logical names of activations: the residual stream [B, N, D] and the logits [B, N, V].
RESIDUAL_AXES = ("act_batch", "act_len", "act_embed")
LOGITS_AXES = ("act_batch", "act_len", "act_vocab")
# A KV cache [B, L, N, H]: its heads and head_dim take the names of the K/V kernel axes that
# fill it, so the cache is split over heads exactly as the projections' outputs are.
KV_CACHE_AXES = ("act_batch", "act_len", "heads", "kv")


def constrain(x: jax.Array, rules: tuple | None, names: tuple = RESIDUAL_AXES) -> jax.Array:
    """Sharding constraint of an activation from its logical names and `rules`, active under
    `jax.set_mesh(mesh)` (a no-op without rules or mesh). It goes through
    `mmjax.parallel.logical_to_spec`, so a dimension that does not divide over its mesh axes
    (a batch of 1 while generating) is replicated instead of failing.

    The rules come from a module field, not from flax's `nn.logical_axis_rules` context: under
    that context flax also constrains DenseGeneral's flattened [embed, heads * kv] kernel
    against its 3 logical names inside init/apply, which fails."""
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh, rules))
