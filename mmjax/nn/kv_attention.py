"""Multi-head attention split into query / key-value / attend, for explicit KV caches.

`MultiHeadAttention` projects queries, keys and values in one call. Autoregressive decoding
wants them apart: keys and values of earlier steps come from a cache (a plain pytree passed
in and out, no hidden 'cache' collection), and cross-attention keys and values of a fixed
context can be computed once. `KVAttention` exposes the stages as methods (`queries`,
`keys_values`, `attend`); `__call__` runs them in a row.

Parameter names and logical axes match `MultiHeadAttention`: `query`, `key`, `value` kernels
[embed, heads, kv], `out` kernel [heads, kv, embed], optional `query_norm` / `key_norm` (QK-norm,
over head_dim).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.mlp import Dtype, dense, layer_norm


class KVAttention(nn.Module):
    """softmax(Q K^T / sqrt(head_dim)) V with the projections exposed as methods.

    Attributes:
      num_heads, head_dim: heads and per-head width (explicit, so the module can build its
        layers in `setup` before it sees an input).
      out_dim: output width (the model width).
      use_bias: biases on the projections (and on the QK-norm).
      qkv_bias, out_bias, norm_bias: override use_bias for the query / key / value
        projections, the output projection and the QK-norm apart (None: use_bias), as
        ml-4m's qkv_bias / proj_bias / norm_bias.
      qk_norm: LayerNorm over head_dim on queries and keys.
      implementation: passed to `jax.nn.dot_product_attention` (None = backend default,
        'xla', or 'cudnn').
    """

    num_heads: int
    head_dim: int
    out_dim: int
    use_bias: bool = True
    qk_norm: bool = False
    qkv_bias: bool | None = None
    out_bias: bool | None = None
    norm_bias: bool | None = None
    implementation: str | None = None
    dtype: Dtype = None
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        features = (self.num_heads, self.head_dim)
        pick = lambda b: self.use_bias if b is None else b
        kw = {"use_bias": pick(self.qkv_bias), "dtype": self.dtype, "param_dtype": self.param_dtype}
        # Attribute names are the parameter names (flax names setup submodules after them).
        self.query = dense(features, ("embed", "heads", "kv"), **kw)
        self.key = dense(features, ("embed", "heads", "kv"), **kw)
        self.value = dense(features, ("embed", "heads", "kv"), **kw)
        kw["use_bias"] = pick(self.out_bias)
        self.out = dense(self.out_dim, ("heads", "kv", "embed"), axis=(-2, -1), **kw)
        if self.qk_norm:
            norm_kw = {"use_bias": pick(self.norm_bias), "param_dtype": self.param_dtype}
            self.query_norm = layer_norm("kv", self.dtype, **norm_kw)
            self.key_norm = layer_norm("kv", self.dtype, **norm_kw)

    def queries(self, x: jax.Array) -> jax.Array:
        """[B, T, D] -> [B, T, N, H] queries (QK-normed when enabled)."""
        q = self.query(x)
        return self.query_norm(q) if self.qk_norm else q

    def keys_values(self, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, S, Dc] -> keys, values [B, S, N, H] (keys QK-normed when enabled)."""
        k = self.key(context)
        if self.qk_norm:
            k = self.key_norm(k)
        return k, self.value(context)

    def attend(
        self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None
    ) -> jax.Array:
        """q [B, T, N, H], k/v [B, S, N, H], mask bool broadcastable to [B, N, T, S]
        (True = may attend) -> [B, T, out_dim]. A query row with no allowed key gets the
        mean of the values (finite), never NaN."""
        if mask is not None:
            b, t, n, _ = q.shape
            mask = jnp.broadcast_to(jnp.asarray(mask, bool), (b, n, t, k.shape[1]))
        k, v = k.astype(q.dtype), v.astype(q.dtype)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.implementation)
        return self.out(out)

    def __call__(
        self, x: jax.Array, context: jax.Array | None = None, mask: jax.Array | None = None
    ) -> jax.Array:
        """x [B, T, D]; context [B, S, Dc] (default x); mask as in `attend`."""
        if x.ndim != 3:
            raise ValueError(f"KVAttention: x must be [B, T, D], got shape {x.shape}")
        k, v = self.keys_values(x if context is None else context)
        return self.attend(self.queries(x), k, v, mask)


def update_kv_cache(
    cache_k: jax.Array, cache_v: jax.Array, k: jax.Array, v: jax.Array, index: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Writes new keys/values k, v [B, S_new, N, H] into cache_k/v [B, L, N, H] at step
    `index` (a scalar, may be traced). In place under buffer donation."""
    index = jnp.asarray(index, jnp.int32)
    cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), index, 1)
    cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), index, 1)
    return cache_k, cache_v
