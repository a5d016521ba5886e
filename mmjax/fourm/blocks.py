"""4M trunk blocks: pre-LN encoder and decoder blocks, with no biases anywhere by default
(`qkv_bias`, `proj_bias`, `mlp_bias`, `norm_bias` add them, and `mlp_type="gelu"` swaps the
SwiGLU for a GELU MLP, as ml-4m's GELU models).

Encoder block:  x += SelfAttn(LN(x));                  x += SwiGLU(LN(x))
Decoder block:  x += SelfAttn(LN(x), decoder mask);
                x += CrossAttn(LN_q(x), LN_c(context));  x += SwiGLU(LN(x))

`empty_context` picks what a decoder query gets from a context with no valid token: "zero"
(mmjax: nothing is added) or "uniform" (ml-4m: masked scores are the most negative float, so the
softmax is uniform over the padding and the mean of its values is added).

The decoder block also runs one autoregressive step against an explicit KV cache (`step`),
and computes its cross-attention keys/values of a fixed context once (`cross_kv`), so that
generation does not re-project the context at every step.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import KVAttention, Mlp, SwiGLU, layer_norm, update_kv_cache
from mmjax.nn.mlp import Dtype
from mmjax.parallel import constrain


class _BlockFields(nn.Module):
    width: int
    num_heads: int
    mlp_dim: int
    qk_norm: bool = False
    attention_impl: str | None = None
    dtype: Dtype = None
    param_dtype: jnp.dtype = jnp.float32
    sharding_rules: tuple | None = None
    empty_context: str = "zero"
    mlp_type: str = "swiglu"
    qkv_bias: bool = False
    proj_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False

    def _norm(self):
        return layer_norm(dtype=self.dtype, use_bias=self.norm_bias, param_dtype=self.param_dtype)

    def _attention(self):
        return KVAttention(
            num_heads=self.num_heads,
            head_dim=self.width // self.num_heads,
            out_dim=self.width,
            use_bias=False,
            qkv_bias=self.qkv_bias,
            out_bias=self.proj_bias,
            norm_bias=self.norm_bias,
            qk_norm=self.qk_norm,
            implementation=self.attention_impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def _mlp(self):
        kw = dict(use_bias=self.mlp_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.mlp_type == "gelu":
            return Mlp(self.mlp_dim, **kw)
        return SwiGLU(self.mlp_dim, **kw)


class EncoderBlock(_BlockFields):
    """Pre-LN self-attention + SwiGLU block."""

    def setup(self):
        self.norm_attn = self._norm()
        self.attn = self._attention()
        self.norm_mlp = self._norm()
        self.mlp = self._mlp()

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x [B, E, D]; mask bool [B, 1, 1, E] (key padding) -> [B, E, D]."""
        x = x + self.attn(self.norm_attn(x), mask=mask)
        return constrain(x + self.mlp(self.norm_mlp(x)), self.sharding_rules)


class DecoderBlock(_BlockFields):
    """Pre-LN self-attention, cross-attention (separate query/context norms) and SwiGLU."""

    def setup(self):
        self.norm_self = self._norm()
        self.self_attn = self._attention()
        self.norm_query = self._norm()
        self.norm_context = self._norm()
        self.cross_attn = self._attention()
        self.norm_mlp = self._norm()
        self.mlp = self._mlp()

    def cross_kv(self, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """context [B, S, D] -> cross-attention keys, values [B, S, N, H]."""
        return self.cross_attn.keys_values(self.norm_context(context))

    def _cross_and_mlp(self, x, cross_k, cross_v, context_mask):
        q = self.cross_attn.queries(self.norm_query(x))
        attn = self.cross_attn.attend(q, cross_k, cross_v, context_mask)
        # An empty context (unconditional generation) adds nothing, rather than the mean of
        # the padding's values, which would depend on what fills the padding; "uniform"
        # keeps that mean, as ml-4m does.
        if self.empty_context != "uniform":
            attn = jnp.where(jnp.any(context_mask, axis=(1, 2, 3))[:, None, None], attn, 0.0)
        x = x + attn
        return constrain(x + self.mlp(self.norm_mlp(x)), self.sharding_rules)

    def __call__(
        self, x: jax.Array, mask: jax.Array, context: jax.Array, context_mask: jax.Array
    ) -> jax.Array:
        """x [B, T, D]; mask bool [B, 1, T, T]; context [B, S, D]; context_mask bool
        [B, 1, 1, S] -> [B, T, D]."""
        x = x + self.self_attn(self.norm_self(x), mask=mask)
        return self._cross_and_mlp(x, *self.cross_kv(context), context_mask)

    def step(self, x, cache_k, cache_v, index, cross_k, cross_v, context_mask):
        """One decoding step. x [B, 1, D]; cache_k/v [B, L, N, H] holding steps < index;
        index: scalar step; cross_k/v [B, S, N, H]; context_mask [B, 1, 1, S].
        Returns (x [B, 1, D], cache_k, cache_v) with this step written at `index`."""
        h = self.norm_self(x)
        k, v = self.self_attn.keys_values(h)
        cache_k, cache_v = update_kv_cache(cache_k, cache_v, k, v, index)
        seen = (jnp.arange(cache_k.shape[1]) <= index)[None, None, None, :]  # [1, 1, 1, L]
        x = x + self.self_attn.attend(self.self_attn.queries(h), cache_k, cache_v, seen)
        return self._cross_and_mlp(x, cross_k, cross_v, context_mask), cache_k, cache_v
