"""Numpy restatements of the building blocks of ml-4m's 4M model, one function per ml-4m module
(fourm/models/fm_utils.py, encoder_embeddings.py, decoder_embeddings.py), in float64.

Each function takes the flat ml-4m state dict `p` and the module's name prefix, so the names
read here are exactly ml-4m's `state_dict()` names. Masks follow ml-4m: True = NOT attended.
"""

import math

import numpy as np

LN_EPS = 1e-6
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _omega(n: int, temperature: float) -> np.ndarray:
    """1 / temperature ** (k / n), k < n, rounded as torch's float32 ops round it."""
    k = (np.arange(n, dtype=np.float32) / np.float32(n)).astype(np.float32)
    return np.float32(1.0) / (float(temperature) ** k.astype(np.float64)).astype(np.float32)


def sincos_1d(n: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """fm_utils.build_1d_sincos_posemb: [1, n, dim] = [sin(pos * w), cos(pos * w)], float32."""
    if dim % 2:
        raise ValueError(f"1D sin-cos position embedding needs an even dim, got {dim}")
    omega = _omega(dim // 2, temperature)
    out = (np.arange(n, dtype=np.float32)[:, None] * omega[None]).astype(np.float64)  # [n, half]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)[None].astype(np.float32)


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """fm_utils.build_2d_sincos_posemb: [1, h*w, dim], float32.

    ml-4m builds meshgrid(grid_w, grid_h, indexing='ij') and flattens it, so token n gets
    "w" = n // h and "h" = n % h: [sin(a w), cos(a w), sin(b w), cos(b w)] with a = n // h,
    b = n % h.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos position embedding needs dim divisible by 4, got {dim}")
    omega = _omega(dim // 4, temperature)
    n = np.arange(h * w)
    a = ((n // h).astype(np.float32)[:, None] * omega[None]).astype(np.float64)
    b = ((n % h).astype(np.float32)[:, None] * omega[None]).astype(np.float64)
    return np.concatenate([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], axis=1)[None].astype(
        np.float32
    )


def linear(p: dict, name: str, x: np.ndarray) -> np.ndarray:
    """torch nn.Linear: x @ W.T (+ b); the bias is optional (qkv_bias / proj_bias / mlp_bias)."""
    y = x @ np.asarray(p[f"{name}.weight"], np.float64).T
    if f"{name}.bias" in p:
        y = y + np.asarray(p[f"{name}.bias"], np.float64)
    return y


def layer_norm(p: dict, name: str, x: np.ndarray) -> np.ndarray:
    """fm_utils.LayerNorm (eps 1e-6, biased variance); with norm_bias=False the bias is a
    stored zero buffer, read like a parameter."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS) * np.asarray(p[f"{name}.weight"], np.float64) + (
        np.asarray(p[f"{name}.bias"], np.float64)
    )


def activation(name: str, x: np.ndarray) -> np.ndarray:
    """torch.nn.GELU (exact erf form) or torch.nn.SiLU, by config['act_layer']."""
    if name == "GELU":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if name == "SiLU":
        return x / (1.0 + np.exp(-x))
    raise ValueError(f"act_layer: expected 'GELU' or 'SiLU', got {name!r}")


def mlp(p: dict, name: str, x: np.ndarray, act: str, gated: bool) -> np.ndarray:
    """fm_utils.Mlp (fc2(act(fc1 x))) or GatedMlp (fc2(act(fc1 x) * fc3 x))."""
    h = activation(act, linear(p, f"{name}.fc1", x))
    if gated:
        h = h * linear(p, f"{name}.fc3", x)
    return linear(p, f"{name}.fc2", h)


def _softmax_masked(scores: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """ml-4m's masked_fill(mask, -finfo.max) then softmax: a fully masked row is uniform."""
    if mask is not None:
        scores = np.where(mask, -np.finfo(scores.dtype).max, scores)
    scores = scores - scores.max(-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(-1, keepdims=True)


def _heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """[B, N, C] -> [B, H, N, C / H]."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(0, 2, 1, 3)


def _attend(p, name, q, k, v, mask, num_heads, qk_norm) -> np.ndarray:
    """Shared tail of (Norm)Attention / (Norm)CrossAttention: per-head QK-norm, scaled dot
    product, mask [B, N or 1, M] broadcast over heads, output projection."""
    if qk_norm:
        q = layer_norm(p, f"{name}.q_norm", q)
        k = layer_norm(p, f"{name}.k_norm", k)
    scale = q.shape[-1] ** -0.5
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale  # [B, H, N, M]
    attn = _softmax_masked(scores, None if mask is None else mask[:, None])
    out = attn @ v  # [B, H, N, hd]
    b, _, n, _ = out.shape
    return linear(p, f"{name}.proj", out.transpose(0, 2, 1, 3).reshape(b, n, -1))


def self_attention(p, name, x, mask, num_heads, qk_norm) -> np.ndarray:
    """fm_utils.Attention / NormAttention with a fused qkv Linear([3 * D, D]); q, k, v are the
    three consecutive D-row blocks, each split into heads of D / H."""
    d = x.shape[-1]
    qkv = linear(p, f"{name}.qkv", x)
    q, k, v = (_heads(qkv[..., i * d : (i + 1) * d], num_heads) for i in range(3))
    return _attend(p, name, q, k, v, mask, num_heads, qk_norm)


def cross_attention(p, name, x, context, mask, num_heads, qk_norm) -> np.ndarray:
    """fm_utils.CrossAttention / NormCrossAttention: q Linear([D, D]) on x, fused kv
    Linear([2 * D, D]) on the context (k = first D rows, v = last D rows)."""
    d = x.shape[-1]
    kv = linear(p, f"{name}.kv", context)
    q = _heads(linear(p, f"{name}.q", x), num_heads)
    k, v = _heads(kv[..., :d], num_heads), _heads(kv[..., d:], num_heads)
    return _attend(p, name, q, k, v, mask, num_heads, qk_norm)


def encoder_block(p, name, x, mask, cfg) -> np.ndarray:
    """fm_utils.Block (pre-norm): x + attn(norm1 x); x + mlp(norm2 x). mask [B, 1, N]."""
    h, qkn = cfg["num_heads"], cfg.get("qk_norm", False)
    x = x + self_attention(p, f"{name}.attn", layer_norm(p, f"{name}.norm1", x), mask, h, qkn)
    y = layer_norm(p, f"{name}.norm2", x)
    return x + mlp(p, f"{name}.mlp", y, cfg["act_layer"], cfg.get("gated_mlp", False))


def decoder_block(p, name, x, context, sa_mask, xa_mask, cfg) -> np.ndarray:
    """fm_utils.DecoderBlock: self-attention (sa_mask [B, M, M]), cross-attention on
    context_norm(context) (xa_mask [B, 1, N]), then the MLP, each pre-normed and residual."""
    h, qkn = cfg["num_heads"], cfg.get("qk_norm", False)
    x = x + self_attention(
        p, f"{name}.self_attn", layer_norm(p, f"{name}.norm1", x), sa_mask, h, qkn
    )
    q = layer_norm(p, f"{name}.query_norm", x)
    c = layer_norm(p, f"{name}.context_norm", context)
    x = x + cross_attention(p, f"{name}.cross_attn", q, c, xa_mask, h, qkn)
    y = layer_norm(p, f"{name}.norm2", x)
    return x + mlp(p, f"{name}.mlp", y, cfg["act_layer"], cfg.get("gated_mlp", False))


def _f64(p, name) -> np.ndarray:
    return np.asarray(p[name], np.float64)


def _seq_pos_emb(pos_emb: np.ndarray, mask: np.ndarray, clip_at: int | None) -> np.ndarray:
    """Position embeddings of a padded sequence: the k-th unmasked token gets pos_emb[k],
    masked tokens get 0 (ml-4m's cumsum / gather / zero-fill). [B, L, D]."""
    pos_id = np.cumsum(~mask, axis=1) - 1
    pos_id[mask] = 0
    if clip_at is not None:  # decoder: targets past max_length fall back to position 0
        pos_id[pos_id >= clip_at] = 0
    out = pos_emb[0][pos_id]
    out[mask] = 0.0
    return out


def image_encoder_embedding(p, name, d, patch_size) -> tuple[np.ndarray, np.ndarray]:
    """encoder_embeddings.ImageEncoderEmbedding: pixels [B, C, H, W] -> patches
    [B, (H/ph)(W/pw), ph*pw*C] (channel fastest) @ proj (no bias); emb = pos_emb + mod_emb."""
    x = np.asarray(d["tensor"], np.float64)
    b, c, hh, ww = x.shape
    ph, pw = patch_size
    if hh % ph or ww % pw:
        raise ValueError(f"{name}: image {hh}x{ww} is not divisible by patch {ph}x{pw}")
    patches = x.reshape(b, c, hh // ph, ph, ww // pw, pw).transpose(0, 2, 4, 3, 5, 1)
    patches = patches.reshape(b, (hh // ph) * (ww // pw), ph * pw * c)
    tokens = linear(p, f"{name}.proj", patches)
    emb = np.broadcast_to(_f64(p, f"{name}.pos_emb") + _f64(p, f"{name}.mod_emb"), tokens.shape)
    return tokens, emb.copy()


def image_token_encoder_embedding(p, name, d) -> tuple[np.ndarray, np.ndarray]:
    """encoder_embeddings.ImageTokenEncoderEmbedding: ids [B, h, w] -> token_emb rows
    [B, h*w, D] (row-major); emb = pos_emb + mod_emb."""
    ids = np.asarray(d["tensor"]).reshape(len(d["tensor"]), -1)
    tokens = _f64(p, f"{name}.token_emb.weight")[ids]
    emb = np.broadcast_to(_f64(p, f"{name}.pos_emb") + _f64(p, f"{name}.mod_emb"), tokens.shape)
    return tokens, emb.copy()


def sequence_encoder_embedding(p, name, d) -> tuple[np.ndarray, np.ndarray]:
    """encoder_embeddings.SequenceEncoderEmbedding: ids [B, L] -> token_emb; emb = position of
    each unmasked token among the unmasked ones (masked: 0) + mod_emb."""
    ids = np.asarray(d["tensor"])
    tokens = _f64(p, f"{name}.token_emb.weight")[ids]
    pos = _seq_pos_emb(_f64(p, f"{name}.pos_emb"), np.asarray(d["input_mask"], bool), None)
    return tokens, pos + _f64(p, f"{name}.mod_emb")


def sequence_emb_encoder_embedding(p, name, d) -> tuple[np.ndarray, np.ndarray]:
    """encoder_embeddings.SequenceEmbEncoderEmbedding (no bottleneck): features [B, L, E] ->
    emb_proj Linear(E, D); emb as in the sequence embedding."""
    tokens = linear(p, f"{name}.emb_proj", np.asarray(d["tensor"], np.float64))
    pos = _seq_pos_emb(_f64(p, f"{name}.pos_emb"), np.asarray(d["input_mask"], bool), None)
    return tokens, pos + _f64(p, f"{name}.mod_emb")


def image_token_decoder_embedding(p, name, d) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """decoder_embeddings.ImageTokenDecoderEmbedding.forward_embed: (token_emb rows [B, h*w, D]
    (replaced by the mask token in FourM), pos_emb + mod_emb, ids [B, h*w])."""
    ids = np.asarray(d["tensor"]).reshape(len(d["tensor"]), -1)
    tokens = _f64(p, f"{name}.token_emb.weight")[ids]
    emb = np.broadcast_to(_f64(p, f"{name}.pos_emb") + _f64(p, f"{name}.mod_emb"), tokens.shape)
    return tokens, emb.copy(), ids


def sequence_decoder_embedding(p, name, d, max_length) -> tuple:
    """decoder_embeddings.SequenceDecoderEmbedding.forward_embed: token_emb of ids, emb =
    position among the target (unmasked in target_mask) tokens, clipped to 0 past
    max_length, + mod_emb; ids [B, L]."""
    ids = np.asarray(d["tensor"])
    tokens = _f64(p, f"{name}.token_emb.weight")[ids]
    mask = np.asarray(d["target_mask"], bool)
    pos = _seq_pos_emb(_f64(p, f"{name}.pos_emb"), mask, max_length)
    return tokens, pos + _f64(p, f"{name}.mod_emb"), ids


def to_logits(p, name, y) -> np.ndarray:
    """forward_logits of either decoder embedding: Linear(D, V, bias=False)."""
    return linear(p, f"{name}.to_logits", y)
