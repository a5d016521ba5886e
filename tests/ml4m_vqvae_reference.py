"""An independent numpy restatement of ml-4m's ViT VQ-VAE tokenizer (fourm/vq/vqvae.py VQVAE
with vit_models' ViTEncoder/ViTDecoder and VectorQuantizerLucid's cosine codebook), random
weights under ml-4m's state-dict names and shapes, and a safetensors writer with ml-4m's
metadata layout (every config value as its Python `str`, read back by YAML).

Layouts are ml-4m's: images and feature maps [B, C, H, W], semseg class ids [B, H, W],
tokens [B, h, w]. Everything runs in float64.
"""

import math

import numpy as np

LN_EPS = 1e-6


def semseg_config(**overrides) -> dict:
    """A tiny semseg tokenizer config (class-index input embedded by `cls_emb`)."""
    cfg = dict(
        image_size=32, n_channels=6, n_labels=7, enc_type="vit_tiny_enc",
        dec_type="vit_tiny_dec", enc_num_heads=2, dec_num_heads=2, patch_proj=True,
        post_mlp=True, patch_size=8, quant_type="lucid", codebook_size=64, num_codebooks=1,
        latent_dim=8, norm_codes=True, norm_latents=False, sync_codebook=False,
        ema_decay=0.99, threshold_ema_dead_code=0.25, code_replacement_policy="batch_random",
        commitment_weight=1.0, kmeans_init=False, undo_std=False, out_conv=False,
        image_size_enc=None, image_size_dec=None, patch_size_dec=None,
    )  # fmt: skip
    cfg.update(overrides)
    return cfg


def feature_config(**overrides) -> dict:
    """A tiny feature-map tokenizer config (CLIP-style: patch_proj=False, D input channels)."""
    cfg = semseg_config(n_channels=12, n_labels=None, patch_proj=False, image_size=64)
    cfg.update(overrides)
    return cfg


def _widths(config) -> tuple[int, int]:
    """(encoder, decoder) widths of the tiny test presets."""
    return config.get("enc_width", 16), config.get("dec_width", 24)


def _depths(config) -> tuple[int, int]:
    return config.get("enc_depth", 2), config.get("dec_depth", 1)


def _block(rng, prefix, d, hidden) -> dict:
    return {
        f"{prefix}.norm1.weight": 1 + 0.2 * rng.standard_normal(d),
        f"{prefix}.norm1.bias": 0.1 * rng.standard_normal(d),
        f"{prefix}.attn.qkv.weight": rng.standard_normal((3 * d, d)) / math.sqrt(d),
        f"{prefix}.attn.qkv.bias": 0.1 * rng.standard_normal(3 * d),
        f"{prefix}.attn.proj.weight": rng.standard_normal((d, d)) / math.sqrt(d),
        f"{prefix}.attn.proj.bias": 0.1 * rng.standard_normal(d),
        f"{prefix}.norm2.weight": 1 + 0.2 * rng.standard_normal(d),
        f"{prefix}.norm2.bias": 0.1 * rng.standard_normal(d),
        f"{prefix}.mlp.fc1.weight": rng.standard_normal((hidden, d)) / math.sqrt(d),
        f"{prefix}.mlp.fc1.bias": 0.1 * rng.standard_normal(hidden),
        f"{prefix}.mlp.fc2.weight": rng.standard_normal((d, hidden)) / math.sqrt(hidden),
        f"{prefix}.mlp.fc2.bias": 0.1 * rng.standard_normal(d),
    }


def _post_mlp(rng, prefix, d, hidden) -> dict:
    return {
        f"{prefix}.norm_mlp.weight": 1 + 0.2 * rng.standard_normal(d),
        f"{prefix}.norm_mlp.bias": 0.1 * rng.standard_normal(d),
        f"{prefix}.post_mlp.fc1.weight": rng.standard_normal((hidden, d)) / math.sqrt(d),
        f"{prefix}.post_mlp.fc1.bias": 0.1 * rng.standard_normal(hidden),
        f"{prefix}.post_mlp.fc2.weight": rng.standard_normal((d, hidden)) / math.sqrt(hidden),
        f"{prefix}.post_mlp.fc2.bias": 0.1 * rng.standard_normal(d),
    }


def random_state_dict(config, seed: int = 0) -> dict:
    """float32 arrays under ml-4m's VQVAE state-dict names and shapes, random values."""
    rng = np.random.default_rng(seed)
    de, dd = _widths(config)
    ne, nd = _depths(config)
    p, c = config["patch_size"], config["n_channels"]
    grid = config["image_size"] // p
    k, z = config["codebook_size"], config["latent_dim"]
    out_c = config["n_labels"] or c
    sd = {}
    if config["n_labels"]:
        sd["cls_emb.weight"] = rng.standard_normal((config["n_labels"], c))
    kp = p if config["patch_proj"] else 1
    sd["encoder.pos_emb"] = rng.standard_normal((1, de, grid, grid))
    sd["encoder.proj.weight"] = rng.standard_normal((de, c, kp, kp)) / math.sqrt(c * kp * kp)
    sd["encoder.proj.bias"] = 0.1 * rng.standard_normal(de)
    for i in range(ne):
        sd.update(_block(rng, f"encoder.blocks.{i}", de, 4 * de))
    if config["post_mlp"]:
        sd.update(_post_mlp(rng, "encoder", de, 4 * de))
    sd["quant_proj.weight"] = rng.standard_normal((z, de, 1, 1)) / math.sqrt(de)
    sd["quant_proj.bias"] = 0.1 * rng.standard_normal(z)
    sd["quantize._codebook.initted"] = np.ones(1)
    sd["quantize._codebook.cluster_size"] = rng.uniform(0, 5, k)
    # EMA codes of unit vectors: shorter than 1, of varying length
    embed = rng.standard_normal((k, z))
    sd["quantize._codebook.embed"] = (
        embed / np.linalg.norm(embed, axis=1, keepdims=True) * (rng.uniform(0.3, 1.0, (k, 1)))
    )
    sd["post_quant_proj.weight"] = rng.standard_normal((dd, z, 1, 1)) / math.sqrt(z)
    sd["post_quant_proj.bias"] = 0.1 * rng.standard_normal(dd)
    sd["decoder.pos_emb"] = rng.standard_normal((1, dd, grid, grid))
    for i in range(nd):
        sd.update(_block(rng, f"decoder.blocks.{i}", dd, 4 * dd))
    if config["post_mlp"]:
        sd.update(_post_mlp(rng, "decoder", dd, 4 * dd))
    out = out_c * kp * kp
    sd["decoder.out_proj.weight"] = rng.standard_normal((out, dd)) / math.sqrt(dd)
    sd["decoder.out_proj.bias"] = 0.1 * rng.standard_normal(out)
    return {name: np.asarray(v, np.float32) for name, v in sd.items()}


def write_ml4m_safetensors(path, state_dict: dict, config: dict) -> str:
    """Writes `state_dict` with the config in the header's metadata, one string per key."""
    from safetensors.numpy import save_file

    save_file(
        {k: np.ascontiguousarray(v) for k, v in state_dict.items()},
        str(path),
        metadata={k: str(v) for k, v in config.items()},
    )
    return str(path)


# ---- forward pass ----


def _layer_norm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS) * w + b


def _linear(sd, name, x):
    return x @ sd[f"{name}.weight"].astype(np.float64).T + sd[f"{name}.bias"]


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(x):
    """Exact (erf) GELU, torch.nn.GELU's default."""
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _attention(sd, name, x, heads):
    b, n, d = x.shape
    qkv = _linear(sd, f"{name}.qkv", x).reshape(b, n, 3, heads, d // heads)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # [B, heads, N, hd]
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    out = (att @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    return _linear(sd, f"{name}.proj", out)


def _trunk(sd, prefix, x, heads, depth, post_mlp):
    """x [B, N, D] (positions added) -> blocks -> optional tanh post-MLP."""
    for i in range(depth):
        p = f"{prefix}.blocks.{i}"
        h = _layer_norm(x, sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"])
        x = x + _attention(sd, f"{p}.attn", h, heads)
        h = _layer_norm(x, sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"])
        x = x + _linear(sd, f"{p}.mlp.fc2", _gelu(_linear(sd, f"{p}.mlp.fc1", h)))
    if post_mlp:
        h = _layer_norm(x, sd[f"{prefix}.norm_mlp.weight"], sd[f"{prefix}.norm_mlp.bias"])
        x = x + _linear(
            sd, f"{prefix}.post_mlp.fc2", np.tanh(_linear(sd, f"{prefix}.post_mlp.fc1", h))
        )
    return x


def _normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _cubic(x: float) -> float:
    """Keys' cubic convolution kernel with a = -0.75 (torch's bicubic)."""
    a, x = -0.75, abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in]: bicubic resampling, align_corners=False, taps clamped at the border."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        base = math.floor(src)
        for tap in range(base - 1, base + 3):
            m[i, min(max(tap, 0), n_in - 1)] += _cubic(src - tap)
    return m


def _positions(table, gh, gw) -> np.ndarray:
    """ml-4m's F.interpolate(pos_emb, (gh, gw), bicubic) -> [gh * gw, D]."""
    t = table[0]  # [D, h, w]
    t = np.einsum(
        "oh,dhw,pw->dop", _interp_matrix(t.shape[1], gh), t, _interp_matrix(t.shape[2], gw)
    )
    return t.reshape(t.shape[0], -1).T


def encode(state_dict, config, x) -> np.ndarray:
    """ml-4m's VQ.tokenize: x (semseg ids [B, H, W], else [B, C, H, W]) -> tokens [B, h, w]."""
    sd = {k: np.asarray(v, np.float64) for k, v in state_dict.items()}
    if config["n_labels"]:
        x = sd["cls_emb.weight"][np.asarray(x)].transpose(0, 3, 1, 2)  # [B, C, H, W]
    x = np.asarray(x, np.float64)
    w = sd["encoder.proj.weight"]  # [D, C, p, p]
    p = w.shape[-1]
    b, c, hh, ww = x.shape
    gh, gw = hh // p, ww // p
    patches = x.reshape(b, c, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, -1)
    t = patches @ w.reshape(w.shape[0], -1).T + sd["encoder.proj.bias"]  # [B, N, D]
    t = t + _positions(sd["encoder.pos_emb"], gh, gw)[None]
    t = _trunk(sd, "encoder", t, config["enc_num_heads"], _count(sd, "encoder"), config["post_mlp"])
    z = t @ sd["quant_proj.weight"][:, :, 0, 0].T + sd["quant_proj.bias"]  # [B, N, latent]
    sim = _normalize(z) @ _normalize(sd["quantize._codebook.embed"]).T
    return sim.argmax(-1).reshape(b, gh, gw).astype(np.int64)


def decode(state_dict, config, tokens) -> np.ndarray:
    """ml-4m's VQVAE.decode_tokens: tokens [B, h, w] -> [B, C_out, H, W] (semseg: logits)."""
    sd = {k: np.asarray(v, np.float64) for k, v in state_dict.items()}
    tokens = np.asarray(tokens)
    b, gh, gw = tokens.shape
    codes = sd["quantize._codebook.embed"][tokens.reshape(b, -1)]  # stored rows, not normalized
    t = codes @ sd["post_quant_proj.weight"][:, :, 0, 0].T + sd["post_quant_proj.bias"]
    t = t + _positions(sd["decoder.pos_emb"], gh, gw)[None]
    t = _trunk(sd, "decoder", t, config["dec_num_heads"], _count(sd, "decoder"), config["post_mlp"])
    t = _linear(sd, "decoder.out_proj", t)  # [B, N, C * p * p], channels first
    c = config["n_labels"] or config["n_channels"]
    p = round(math.sqrt(t.shape[-1] // c))
    t = t.reshape(b, gh, gw, c, p, p).transpose(0, 3, 1, 4, 2, 5)
    return t.reshape(b, c, gh * p, gw * p)


def _count(sd, prefix) -> int:
    return len({k.split(".")[2] for k in sd if k.startswith(f"{prefix}.blocks.")})
