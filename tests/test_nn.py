"""mmjax.nn against numpy references: attention, sin-cos positions, MLPs, partitioning."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from mmjax.nn import Mlp, MultiHeadAttention, SwiGLU, TransformerBlock, sincos_1d, sincos_2d


def _np_params(variables):
    return jax.tree.map(np.asarray, nn.meta.unbox(variables["params"]))


def _np_softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def _np_attention(p, x, ctx, mask, qk_norm=False):
    """Per-head loops in float64: softmax(Q K^T / sqrt(d)) V, then the output projection."""
    x, ctx = x.astype(np.float64), ctx.astype(np.float64)

    def proj(name, inp):
        out = np.einsum("bsd,dnh->bsnh", inp, p[name]["kernel"])
        return out + p[name]["bias"] if "bias" in p[name] else out

    def ln(t, scale, bias):
        mu = t.mean(-1, keepdims=True)
        var = ((t - mu) ** 2).mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + 1e-6) * scale + bias

    q, k, v = proj("query", x), proj("key", ctx), proj("value", ctx)
    if qk_norm:
        q = ln(q, p["query_norm"]["scale"], p["query_norm"]["bias"])
        k = ln(k, p["key_norm"]["scale"], p["key_norm"]["bias"])
    b, t, n, h = q.shape
    out = np.zeros((b, t, n, h))
    for bi in range(b):
        for ni in range(n):
            scores = q[bi, :, ni] @ k[bi, :, ni].T / np.sqrt(h)  # [T, S]
            if mask is not None:
                m = np.broadcast_to(mask, (b, n, t, ctx.shape[1]))[bi, ni]
                scores = np.where(m, scores, -np.inf)
            out[bi, :, ni] = _np_softmax(scores) @ v[bi, :, ni]
    y = np.einsum("btnh,nhd->btd", out, p["out"]["kernel"])
    return y + p["out"]["bias"] if "bias" in p["out"] else y


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_self_attention_matches_numpy(use_mask, qk_norm):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)
    mask = None
    if use_mask:
        # key padding: batch 0 sees all 5 keys, batch 1 only the first 3
        mask = (np.arange(5)[None, :] < np.array([[5], [3]]))[:, None, None, :]
    layer = MultiHeadAttention(num_heads=4, qk_norm=qk_norm)
    variables = layer.init(jax.random.key(0), x)
    y = layer.apply(variables, x, mask=mask)
    ref = _np_attention(_np_params(variables), x, x, mask, qk_norm)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-5)
    if use_mask:
        # masked keys really are ignored: changing them does not change batch 1's output
        x2 = x.copy()
        x2[1, 3:] += 10.0
        y2 = layer.apply(variables, x2, mask=mask)
        np.testing.assert_allclose(np.asarray(y2[1, :3]), np.asarray(y[1, :3]), atol=1e-6)


def test_cross_attention_without_bias_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 8)).astype(np.float32)
    ctx = rng.normal(size=(2, 6, 12)).astype(np.float32)
    mask = rng.random((2, 1, 3, 6)) < 0.7
    mask[..., 0] = True  # every query sees at least one key
    layer = MultiHeadAttention(num_heads=2, head_dim=5, use_bias=False)
    variables = layer.init(jax.random.key(1), x, context=ctx)
    p = _np_params(variables)
    assert all("bias" not in v for v in p.values())
    y = layer.apply(variables, x, context=ctx, mask=mask)
    np.testing.assert_allclose(np.asarray(y), _np_attention(p, x, ctx, mask), rtol=1e-4, atol=1e-5)


def test_sincos_1d_and_2d_match_formula():
    dim, pos = 8, np.array([0, 1, 5, 17])
    emb = sincos_1d(pos, dim)
    for r, p in enumerate(pos):
        for i in range(dim // 2):
            w = 1.0 / 10000 ** (i / (dim // 2))
            assert emb[r, i] == pytest.approx(np.sin(p * w), abs=1e-6)
            assert emb[r, dim // 2 + i] == pytest.approx(np.cos(p * w), abs=1e-6)
    grid = sincos_2d(3, 4, 16)
    assert grid.shape == (12, 16)
    for r in range(3):
        for c in range(4):
            row = grid[r * 4 + c]
            np.testing.assert_allclose(row[:8], sincos_1d([r], 8)[0], atol=1e-6)
            np.testing.assert_allclose(row[8:], sincos_1d([c], 8)[0], atol=1e-6)
    # distinct positions get distinct embeddings
    assert len({tuple(np.round(v, 5)) for v in grid}) == 12
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(2, 2, 6)


def test_swiglu_and_mlp_match_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    swiglu = SwiGLU(hidden_dim=10, out_dim=4)
    v = swiglu.init(jax.random.key(0), x)
    p = _np_params(v)
    gate, up = x @ p["gate"]["kernel"], x @ p["up"]["kernel"]
    ref = (gate / (1 + np.exp(-gate)) * up) @ p["down"]["kernel"]
    np.testing.assert_allclose(np.asarray(swiglu.apply(v, x)), ref, rtol=1e-5, atol=1e-6)

    mlp = Mlp(hidden_dim=7)
    v = mlp.init(jax.random.key(1), x)
    p = _np_params(v)
    h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    ref = h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    np.testing.assert_allclose(np.asarray(mlp.apply(v, x)), ref, rtol=1e-5, atol=1e-6)


def test_every_param_has_logical_axes():
    x = jnp.ones((1, 4, 8))
    block = TransformerBlock(
        num_heads=2, mlp_dim=16, mlp="swiglu", cross_attention=True, qk_norm=True
    )
    v = block.init(jax.random.key(0), x, context=jnp.ones((1, 3, 8)))
    leaves = jax.tree.leaves(v["params"], is_leaf=lambda t: isinstance(t, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(t, nn.LogicallyPartitioned) for t in leaves)
    specs = nn.get_partition_spec(v)["params"]
    assert tuple(specs["attn"]["query"]["kernel"]) == ("embed", "heads", "kv")
    assert tuple(specs["attn"]["out"]["kernel"]) == ("heads", "kv", "embed")
    assert tuple(specs["mlp"]["gate"]["kernel"]) == ("embed", "mlp")
    assert tuple(specs["attn"]["query_norm"]["scale"]) == ("kv",)
    with pytest.raises(ValueError, match="mlp"):
        TransformerBlock(num_heads=2, mlp_dim=4, mlp="relu").init(jax.random.key(0), x)
