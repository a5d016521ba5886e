"""An independent numpy restatement of ml-4m's 4M model (fourm/models/fm.py FourM / FM), random
checkpoints laid out as ml-4m's `FourM.state_dict()`, and safetensors files laid out as the
released ones (the FM config in `__metadata__`, every value as its Python `str`, read back by
ml-4m with YAML).

Configs (tests/ml4m_reference_config.py) have the keys of a released file's metadata, plus an
optional `modality_info` of per-domain size overrides for tiny models; `ml4m_modality_info`
resolves a config against ml-4m's modality table.

Inputs are ml-4m `mod_dict`s (numpy): {domain: {"tensor", "input_mask", "target_mask",
"decoder_attention_mask"}}, True in the masks = NOT used. rgb pixels are [B, 3, H, W],
ImageNet-normalised ((x - mean) / std on [0, 1] images, as ml-4m's RGBTransform); image tokens
[B, h, w]; sequences [B, L] padded with 0; t5_caption [B, L, E] features.

ml-4m details a converter must keep: sequence embeddings store a [1, 512, D] sin-cos buffer
whatever their max_length (ml-4m slices the table's batch axis); the encoder picks position k
for the k-th unmasked token, the decoder the same but k >= max_length falls back to 0; with
share_modality_embeddings the decoder's mod_emb is the encoder's tensor; LayerNorm(bias=False)
still stores a zero `bias`; the decoder's mask-token inputs, position embeddings and padded
tokens are zeroed, and padded decoder tokens are never attended by target tokens.
"""

import ast
import json
import math

import numpy as np
from safetensors.numpy import load_file, save_file

from tests import ml4m_reference_layers as L
from tests.ml4m_reference_config import (
    MAX_SINCOS_POS_EMB,
    ML4M_MODALITIES,
    ml4m_config,
    ml4m_modality_info,
)
from tests.ml4m_reference_inputs import ml4m_example_inputs, ml4m_token_counts

__all__ = [
    "ML4M_MODALITIES",
    "load_ml4m_checkpoint",
    "ml4m_config",
    "ml4m_example_inputs",
    "ml4m_forward",
    "ml4m_logits",
    "ml4m_modality_info",
    "ml4m_param_spec",
    "ml4m_state_dict",
    "ml4m_token_counts",
    "save_ml4m_checkpoint",
]


def _linear(prefix, out_f, in_f, bias) -> list:
    spec = [(f"{prefix}.weight", (out_f, in_f), "linear")]
    return spec + ([(f"{prefix}.bias", (out_f,), "bias")] if bias else [])


def _norm(prefix, d, bias) -> list:
    return [
        (f"{prefix}.weight", (d,), "ln_weight"),
        (f"{prefix}.bias", (d,), "bias" if bias else "zeros"),
    ]


def _attn_spec(prefix, d, heads, cfg, cross) -> list:
    """(Norm)Attention: qkv, proj[, q_norm, k_norm]; (Norm)CrossAttention: q, kv, proj[, ...]."""
    qb, pb, nb = cfg["qkv_bias"], cfg["proj_bias"], cfg["norm_bias"]
    if cross:
        spec = _linear(f"{prefix}.q", d, d, qb) + _linear(f"{prefix}.kv", 2 * d, d, qb)
    else:
        spec = _linear(f"{prefix}.qkv", 3 * d, d, qb)
    spec += _linear(f"{prefix}.proj", d, d, pb)
    if cfg.get("qk_norm", False):
        spec += _norm(f"{prefix}.q_norm", d // heads, nb) + _norm(
            f"{prefix}.k_norm", d // heads, nb
        )
    return spec


def _mlp_spec(prefix, d, cfg) -> list:
    hidden = int(d * cfg["mlp_ratio"])
    mb = cfg["mlp_bias"]
    if cfg.get("gated_mlp", False):
        hidden = int(2 * hidden / 3)
        return (_linear(f"{prefix}.fc1", hidden, d, mb) + _linear(f"{prefix}.fc2", d, hidden, mb)
                + _linear(f"{prefix}.fc3", hidden, d, mb))  # fmt: skip
    return _linear(f"{prefix}.fc1", hidden, d, mb) + _linear(f"{prefix}.fc2", d, hidden, mb)


def _embedding_spec(prefix, info, d, decoder) -> list:
    """Parameters then buffers then children, as torch orders a module's state_dict."""
    if info["type"] == "img":
        n_pos = info["num_tokens"]
    else:  # ml-4m slices its [1, 512, D] sin-cos table with [:max_length] on the batch axis,
        # so the stored buffer keeps all 512 positions; learned tables have max_length rows
        n_pos = MAX_SINCOS_POS_EMB if info["sincos_pos_emb"] else info["max_length"]
    pos = (f"{prefix}.pos_emb", (1, n_pos, d), "sincos" if info["sincos_pos_emb"] else "pos_param")
    own = [(f"{prefix}.mod_emb", (1, 1, d), "mod_emb")]
    own = [*own, pos] if info["sincos_pos_emb"] else [pos, *own]
    kind = info["decoder"] if decoder else info["encoder"]
    if kind == "pixels":
        c, ps = info["num_channels"], info["patch_size"]
        return own + _linear(f"{prefix}.proj", d, c * ps * ps, False)
    if kind == "sequence_emb":
        return own + _linear(f"{prefix}.emb_proj", d, info["orig_emb_dim"], True)
    spec = [*own, (f"{prefix}.token_emb.weight", (info["vocab_size"], d), "token_emb")]
    if decoder:
        spec += [(f"{prefix}.to_logits.weight", (info["vocab_size"], d), "linear")]
    return spec


def ml4m_param_spec(config: dict) -> list:
    """[(name, shape, kind)] of FourM(...).state_dict() for the config, in torch's order."""
    info, d, h = ml4m_modality_info(config), config["dim"], config["num_heads"]
    nb = config["norm_bias"]
    spec = [("mask_token", (1, 1, d), "mask_token")]
    if config.get("num_register_tokens", 0) > 0:
        spec.append(("register_tokens", (1, config["num_register_tokens"], d), "mask_token"))
    for mod in config["domains_in"]:
        if info[mod]["encoder"] is not None:
            spec += _embedding_spec(f"encoder_embeddings.{mod}", info[mod], d, decoder=False)
    for mod in config["domains_out"]:
        if info[mod]["decoder"] is not None:
            spec += _embedding_spec(f"decoder_embeddings.{mod}", info[mod], d, decoder=True)
    for i in range(config["encoder_depth"]):
        b = f"encoder.{i}"
        spec += _norm(f"{b}.norm1", d, nb) + _attn_spec(f"{b}.attn", d, h, config, cross=False)
        spec += _norm(f"{b}.norm2", d, nb) + _mlp_spec(f"{b}.mlp", d, config)
    spec += _norm("encoder_norm", d, nb) + _linear("decoder_proj_context", d, d, True)
    for i in range(config["decoder_depth"]):
        b = f"decoder.{i}"
        spec += _norm(f"{b}.norm1", d, nb) + _attn_spec(f"{b}.self_attn", d, h, config, False)
        spec += _attn_spec(f"{b}.cross_attn", d, h, config, cross=True)
        spec += _norm(f"{b}.query_norm", d, nb) + _norm(f"{b}.context_norm", d, nb)
        spec += _norm(f"{b}.norm2", d, nb) + _mlp_spec(f"{b}.mlp", d, config)
    return spec + _norm("decoder_norm", d, nb)


def _random_value(rng, name, shape, kind) -> np.ndarray:
    if kind == "linear":
        return rng.standard_normal(shape) / math.sqrt(shape[1])
    if kind == "bias":
        return 0.1 * rng.standard_normal(shape)
    if kind == "ln_weight":
        return 1.0 + 0.2 * rng.standard_normal(shape)
    if kind == "zeros":  # LayerNorm(bias=False) keeps a zero `bias` buffer in the state dict
        return np.zeros(shape)
    if kind == "token_emb":
        return rng.standard_normal(shape)
    if kind in ("mod_emb", "mask_token", "pos_param"):
        return 0.5 * rng.standard_normal(shape)
    if kind == "sincos":  # a fixed buffer: stored as ml-4m computes it
        _, n, d = shape
        if name.endswith(".pos_emb") and _is_image_pos(name):
            g = math.isqrt(n)
            return L.sincos_2d(g, g, d)
        return L.sincos_1d(n, d)
    raise ValueError(f"unknown parameter kind {kind!r} for {name}")


def _is_image_pos(name: str) -> bool:
    mod = name.split(".")[1]
    return ML4M_MODALITIES[mod]["type"] == "img"


def ml4m_state_dict(config: dict, seed: int = 0) -> dict:
    """Random float32 weights named and shaped as ml-4m's FourM(...).state_dict(). Sin-cos
    position buffers hold ml-4m's values, LayerNorm(bias=False) buffers zeros; with
    share_modality_embeddings the decoder's mod_emb equals the encoder's (one tied tensor)."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape, kind in ml4m_param_spec(config):
        state[name] = np.asarray(_random_value(rng, name, shape, kind), np.float32)
    if config.get("share_modality_embeddings", True):
        for mod in set(config["domains_in"]) & set(config["domains_out"]):
            enc, dec = f"encoder_embeddings.{mod}.mod_emb", f"decoder_embeddings.{mod}.mod_emb"
            if enc in state and dec in state:
                state[dec] = state[enc].copy()
    return state


def save_ml4m_checkpoint(path, state: dict, config: dict) -> None:
    """A safetensors file as released: tensors plus the config in `__metadata__`, each value
    as its Python `str` (ml-4m's load_safetensors YAML-parses them, 'None' read as null)."""
    metadata = {k: str(v) for k, v in config.items()}
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path), metadata=metadata)


def load_ml4m_checkpoint(path) -> tuple:
    """(state, config) from a safetensors file; metadata values parsed as Python literals
    (what str() wrote), left as strings where they are not one ('GELU')."""
    state = load_file(str(path))
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    config = {}
    for k, v in header.get("__metadata__", {}).items():
        try:
            config[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            config[k] = v
    return state, config


def _select(mask: np.ndarray, n: int) -> np.ndarray:
    """ml-4m's argsort(mask + arange * 1e-6)[:, :n]: unmasked tokens first, each group in
    order (a stable sort of the mask). [B, n] indices."""
    if n > mask.shape[1]:
        raise ValueError(f"asked for {n} tokens, only {mask.shape[1]} exist")
    return np.argsort(mask.astype(np.int8), axis=1, kind="stable")[:, :n]


def _take(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def forward_mask_encoder(p, config, info, mod_dict, num_encoder_tokens):
    """FourM encoder embeddings + forward_mask_encoder: embed every input domain (mod_dict
    order), concatenate, keep num_encoder_tokens (unmasked first), zero the masked ones.
    Returns tokens [B, N, D], emb [B, N, D], mask [B, N]."""
    xs, embs, masks = [], [], []
    for mod, d in mod_dict.items():
        kind = info[mod]["encoder"] if mod in config["domains_in"] else None
        name = f"encoder_embeddings.{mod}"
        if kind == "pixels":
            ps = info[mod]["patch_size"]
            x, emb = L.image_encoder_embedding(p, name, d, (ps, ps))
        elif kind == "image_tokens":
            x, emb = L.image_token_encoder_embedding(p, name, d)
        elif kind == "sequence":
            x, emb = L.sequence_encoder_embedding(p, name, d)
        elif kind == "sequence_emb":
            x, emb = L.sequence_emb_encoder_embedding(p, name, d)
        else:
            continue
        xs.append(x)
        embs.append(emb)
        masks.append(np.asarray(d["input_mask"], bool).reshape(len(x), -1))
    if not xs:
        raise ValueError(f"mod_dict has no input domain of {config['domains_in']}")
    x, emb, mask = (np.concatenate(a, axis=1) for a in (xs, embs, masks))
    keep = _select(mask, num_encoder_tokens)
    x, emb, mask = _take(x, keep), _take(emb, keep), _take(mask, keep)
    n_reg = config.get("num_register_tokens", 0)
    if n_reg > 0:
        reg = np.broadcast_to(
            np.asarray(p["register_tokens"], np.float64), (len(x), n_reg, x.shape[2])
        )
        x = np.concatenate([reg, x], axis=1)
        emb = np.concatenate([np.zeros_like(reg), emb], axis=1)
        mask = np.concatenate([np.zeros((len(x), n_reg), bool), mask], axis=1)
    x, emb = np.where(mask[..., None], 0.0, x), np.where(mask[..., None], 0.0, emb)
    return x, emb, mask


def forward_mask_decoder(p, config, info, mod_dict, num_decoder_tokens):
    """FourM decoder embeddings + cat_decoder_tensors + forward_mask_decoder. Domains are taken
    in mod_dict order (ml-4m shuffles them at random: with enough decoder tokens for every
    target, logits do not depend on that order). Sequences are shifted: token t predicts
    ids[t + 1], valid where t and t + 1 are both targets. Returns tokens, emb [B, M, D], mask,
    attention mask [B, M, M] (True = blocked), mod ids [B, M] (-1 where masked)."""
    mask_token = np.asarray(p["mask_token"], np.float64)
    xs, embs, masks, dams, mods = [], [], [], [], []
    for mod, d in mod_dict.items():
        if mod not in config["domains_out"] or info[mod]["decoder"] is None:
            continue
        name = f"decoder_embeddings.{mod}"
        tm, dam = np.asarray(d["target_mask"], bool), np.asarray(d["decoder_attention_mask"])
        if info[mod]["decoder"] == "sequence":
            x, emb, _ = L.sequence_decoder_embedding(p, name, d, info[mod]["max_length"])
            x, emb, tm, dam = x[:, :-1], emb[:, :-1], tm[:, 1:] | tm[:, :-1], dam[:, :-1]
        else:
            x, emb, _ = L.image_token_decoder_embedding(p, name, d)
            x = np.zeros_like(x) + mask_token
            tm, dam = tm.reshape(len(x), -1), dam.reshape(len(x), -1)
        xs.append(x)
        embs.append(emb)
        masks.append(tm)
        dams.append(dam)
        mods.append(np.full(tm.shape, info[mod]["id"]))
    x, emb, mask, dam, mod_ids = (np.concatenate(a, axis=1) for a in (xs, embs, masks, dams, mods))
    keep = _select(mask, num_decoder_tokens)
    x, emb, mask, dam, mod_ids = (_take(a, keep) for a in (x, emb, mask, dam, mod_ids))
    x, emb = np.where(mask[..., None], 0.0, x), np.where(mask[..., None], 0.0, emb)
    attn_mask = adapt_decoder_attention_mask(config, dam, mod_ids)
    return x, emb, mask, attn_mask, np.where(mask, -1, mod_ids)


def adapt_decoder_attention_mask(config, dam: np.ndarray, mod_ids: np.ndarray) -> np.ndarray:
    """FourM.adapt_decoder_attention_mask: query i sees keys j < cumsum(dam)[i] (or j <= i when
    decoder_causal_mask), and with decoder_sep_mask only keys of its own modality (mod ids taken
    before masked tokens are set to -1). [B, M, M], True = blocked."""
    b, m = dam.shape
    if config.get("decoder_causal_mask", False):
        blocked = np.broadcast_to(np.triu(np.ones((m, m), bool), 1), (b, m, m))
    else:
        blocked = np.arange(m)[None, None, :] >= np.cumsum(dam, axis=1)[:, :, None]
    if config.get("decoder_sep_mask", True):
        blocked = blocked | (mod_ids[:, None, :] != mod_ids[:, :, None])
    return blocked


def forward_encoder(p, config, x, mask) -> np.ndarray:
    """FourM.forward_encoder on x = tokens + emb [B, N, D], keys masked by mask [B, N]."""
    for i in range(config["encoder_depth"]):
        x = L.encoder_block(p, f"encoder.{i}", x, mask[:, None, :], config)
    return L.layer_norm(p, "encoder_norm", x)


def forward_decoder(p, config, y, context, sa_mask, enc_mask) -> np.ndarray:
    """FourM.forward_decoder: decoder blocks on y [B, M, D] over context [B, N, D]."""
    for i in range(config["decoder_depth"]):
        y = L.decoder_block(p, f"decoder.{i}", y, context, sa_mask, enc_mask[:, None, :], config)
    return L.layer_norm(p, "decoder_norm", y)


def ml4m_forward(state, config, mod_dict, num_encoder_tokens, num_decoder_tokens) -> dict:
    """FourM.forward up to the decoder output: {'y' [B, M, D] (after decoder_norm),
    'mod_ids' [B, M] (domain id per decoder token, -1 = masked), 'encoder' [B, N, D]}."""
    info = ml4m_modality_info(config)
    p = state
    x, enc_emb, enc_mask = forward_mask_encoder(p, config, info, mod_dict, num_encoder_tokens)
    dec_x, dec_emb, _, sa_mask, mod_ids = forward_mask_decoder(
        p, config, info, mod_dict, num_decoder_tokens
    )
    x = forward_encoder(p, config, x + enc_emb, enc_mask)
    context = L.linear(p, "decoder_proj_context", x) + enc_emb
    y = forward_decoder(p, config, dec_x + dec_emb, context, sa_mask, enc_mask)
    return {"y": y, "mod_ids": mod_ids, "encoder": x}


def ml4m_logits(state, config, mod_dict, num_encoder_tokens: int, num_decoder_tokens: int) -> dict:
    """Output-head logits of ml-4m's FourM.forward, float64: {domain: [B, n, V]} for every
    output domain in mod_dict (mod_dict order), n = its decoder tokens selected as targets.

    Token order (ml-4m's decoder order within a domain): image tokens in row-major order of
    the h x w grid, restricted to target_mask == False; sequences by position t (0-based in
    the domain's tensor) for every t < L - 1 with target_mask[t] and target_mask[t + 1] both
    False, the logits at t predicting tensor[t + 1]. Rows must select the same n per domain.
    """
    out = ml4m_forward(state, config, mod_dict, num_encoder_tokens, num_decoder_tokens)
    y, mod_ids = out["y"], out["mod_ids"]
    info = ml4m_modality_info(config)
    logits = {}
    for mod in mod_dict:
        if mod not in config["domains_out"] or info[mod]["decoder"] is None:
            continue
        sel = mod_ids == info[mod]["id"]
        counts = sel.sum(1)
        if np.any(counts != counts[0]):
            raise ValueError(f"{mod}: rows select different target counts {counts.tolist()}")
        ys = y[sel].reshape(len(y), int(counts[0]), y.shape[-1])
        logits[mod] = L.to_logits(state, f"decoder_embeddings.{mod}", ys)
    return logits
