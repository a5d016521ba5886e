"""KVAttention: same numbers as MultiHeadAttention with the same parameters; stepping through
an explicit KV cache reproduces causal attention over the whole sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn import KVAttention, MultiHeadAttention, layer_norm, update_kv_cache


# (MultiHeadAttention's QK-norm always has a bias; KVAttention's follows use_bias, so the
# parameter trees coincide for these combinations.)
@pytest.mark.parametrize("use_bias,qk_norm", [(True, False), (True, True), (False, False)])
def test_kv_attention_matches_multi_head_attention(use_bias, qk_norm):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
    ctx = jnp.asarray(rng.normal(size=(2, 7, 16)), jnp.float32)
    mask = jnp.asarray(rng.random((2, 1, 5, 7)) < 0.7)
    mha = MultiHeadAttention(num_heads=4, use_bias=use_bias, qk_norm=qk_norm)
    kva = KVAttention(num_heads=4, head_dim=4, out_dim=16, use_bias=use_bias, qk_norm=qk_norm)
    params = mha.init(jax.random.key(0), x, ctx, mask)
    own = kva.init(jax.random.key(0), x, ctx, mask)
    assert jax.tree.structure(own) == jax.tree.structure(params)
    want = mha.apply(params, x, ctx, mask)
    np.testing.assert_allclose(kva.apply(params, x, ctx, mask), want, rtol=1e-5, atol=1e-5)


def test_cached_steps_match_causal_attention():
    rng = np.random.default_rng(1)
    b, t, n, h = 2, 6, 2, 8
    x = jnp.asarray(rng.normal(size=(b, t, n * h)), jnp.float32)
    attn = KVAttention(num_heads=n, head_dim=h, out_dim=n * h, use_bias=False, qk_norm=True)
    params = attn.init(jax.random.key(1), x)
    causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
    want = attn.apply(params, x, mask=causal)

    def step(carry, i):
        ck, cv = carry
        xi = jax.lax.dynamic_slice_in_dim(x, i, 1, axis=1)
        q = attn.apply(params, xi, method=KVAttention.queries)
        k, v = attn.apply(params, xi, method=KVAttention.keys_values)
        ck, cv = update_kv_cache(ck, cv, k, v, i)
        seen = (jnp.arange(t) <= i)[None, None, None, :]
        out = attn.apply(params, q, ck, cv, seen, method=KVAttention.attend)
        return (ck, cv), out[:, 0]

    zeros = jnp.zeros((b, t, n, h))
    _, outs = jax.lax.scan(step, (zeros, zeros), jnp.arange(t))
    np.testing.assert_allclose(jnp.swapaxes(outs, 0, 1), want, rtol=1e-5, atol=1e-5)


def test_layer_norm_without_bias_has_only_scale():
    ln = layer_norm(use_bias=False)
    params = ln.init(jax.random.key(0), jnp.ones((2, 8)))["params"]
    assert set(params) == {"scale"}
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 8)), jnp.float32)
    ref = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(ln.apply({"params": params}, x), ref, rtol=1e-5, atol=1e-5)
