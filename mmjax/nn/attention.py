"""Multi-head self- and cross-attention and the pre-LN transformer block.

Attention runs through `jax.nn.dot_product_attention` (XLA on CPU, cuDNN/flash where the
backend offers it). Kernels are named [embed, heads, kv] (q, k, v) and [heads, kv, embed]
(output) for tensor parallelism over heads.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.mlp import Dtype, Mlp, SwiGLU, dense, layer_norm


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(head_dim)) V over `num_heads` heads.

    Attributes:
      num_heads: number of heads.
      head_dim: per-head width; default: input width // num_heads.
      out_dim: output width; default: the input width.
      use_bias: biases on the q, k, v and output projections.
      qk_norm: LayerNorm on each head's queries and keys (over head_dim) before the dot
        product (stabilizes large models; ViT-22B, Chameleon).
    """

    num_heads: int
    head_dim: int | None = None
    out_dim: int | None = None
    use_bias: bool = True
    qk_norm: bool = False
    dtype: Dtype = None

    @nn.compact
    def __call__(
        self, x: jax.Array, context: jax.Array | None = None, mask: jax.Array | None = None
    ) -> jax.Array:
        """x: [B, T, D] queries; context: [B, S, Dc] keys/values (default: x, i.e.
        self-attention); mask: boolean, True = may attend, broadcastable to
        [B, num_heads, T, S] (e.g. [B, 1, 1, S] for key padding). Returns [B, T, out_dim]."""
        if x.ndim != 3:
            raise ValueError(f"MultiHeadAttention: x must be [B, T, D], got shape {x.shape}")
        context = x if context is None else context
        width = x.shape[-1]
        head_dim = self.head_dim or width // self.num_heads
        if head_dim < 1:
            raise ValueError(
                f"MultiHeadAttention: width {width} is smaller than num_heads {self.num_heads}"
            )
        features = (self.num_heads, head_dim)
        kw = {"use_bias": self.use_bias, "dtype": self.dtype}
        q = dense(features, ("embed", "heads", "kv"), name="query", **kw)(x)  # [B, T, N, H]
        k = dense(features, ("embed", "heads", "kv"), name="key", **kw)(context)  # [B, S, N, H]
        v = dense(features, ("embed", "heads", "kv"), name="value", **kw)(context)
        if self.qk_norm:
            q = layer_norm("kv", dtype=self.dtype, name="query_norm")(q)
            k = layer_norm("kv", dtype=self.dtype, name="key_norm")(k)
        if mask is not None:
            mask = jnp.asarray(mask, bool)
            if mask.ndim > 4:
                raise ValueError(f"MultiHeadAttention: mask rank must be <= 4, got {mask.shape}")
            mask = jnp.broadcast_to(
                mask, (x.shape[0], self.num_heads, x.shape[1], context.shape[1])
            )
        out = jax.nn.dot_product_attention(q, k, v, mask=mask)  # [B, T, N, H]
        return dense(
            self.out_dim or width, ("heads", "kv", "embed"), axis=(-2, -1), name="out", **kw
        )(out)


class TransformerBlock(nn.Module):
    """Pre-LN block: x + Attn(LN(x)) [+ CrossAttn(LN(x), context)] + MLP(LN(x)).

    Attributes:
      num_heads, mlp_dim: attention heads and MLP hidden width.
      mlp: "gelu" or "swiglu".
      cross_attention: add a cross-attention sublayer over `context`.
      use_bias, qk_norm: passed to the attention layers (and biases to the MLP).
    """

    num_heads: int
    mlp_dim: int
    mlp: str = "gelu"
    cross_attention: bool = False
    use_bias: bool = True
    qk_norm: bool = False
    dtype: Dtype = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> jax.Array:
        attn_kw = {
            "num_heads": self.num_heads,
            "use_bias": self.use_bias,
            "qk_norm": self.qk_norm,
            "dtype": self.dtype,
        }
        h = layer_norm(dtype=self.dtype, name="norm_attn")(x)
        x = x + MultiHeadAttention(**attn_kw, name="attn")(h, mask=mask)
        if self.cross_attention:
            if context is None:
                raise ValueError("TransformerBlock: cross_attention=True needs a context")
            h = layer_norm(dtype=self.dtype, name="norm_cross")(x)
            x = x + MultiHeadAttention(**attn_kw, name="cross_attn")(
                h, context=context, mask=context_mask
            )
        h = layer_norm(dtype=self.dtype, name="norm_mlp")(x)
        if self.mlp == "gelu":
            mlp = Mlp(self.mlp_dim, use_bias=self.use_bias, dtype=self.dtype, name="mlp")
        elif self.mlp == "swiglu":
            mlp = SwiGLU(self.mlp_dim, use_bias=self.use_bias, dtype=self.dtype, name="mlp")
        else:
            raise ValueError(f"TransformerBlock: mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        return x + mlp(h)
