"""Configs of the numpy ml-4m 4M reference: ml-4m's modality table (fourm/data/
modality_info.py, the fields that shape FourM's embeddings), tiny FM configs in the released
metadata's format, and the per-domain resolution of both.

A config has the keys of a released file's metadata (what `FM(config)` reads): `domains_in`,
`domains_out`, `image_size`, `patch_size`, `norm_bias`, `act_layer`, and FourM's keyword
arguments. Released files take every modality's sizes from ml-4m's MODALITY_INFO (kept here as
ML4M_MODALITIES); tiny test configs add one optional key, `modality_info`: {domain: {field:
value}} overriding those fields (vocab_size, input_size, patch_size, max_length, num_channels,
orig_emb_dim, sincos_pos_emb).
"""

MAX_SINCOS_POS_EMB = 512  # ml-4m's max_sincos_pos_emb default for sequence embeddings
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _img_tok(vocab, input_size=224, patch_size=16, sincos=True):
    kw = dict(vocab_size=vocab, input_size=input_size, patch_size=patch_size)
    return dict(
        type="img", encoder="image_tokens", decoder="image_tokens", sincos_pos_emb=sincos, **kw
    )


def _pixels(input_size):
    return dict(type="img", encoder="pixels", decoder=None, input_size=input_size,
                patch_size=16, num_channels=3, sincos_pos_emb=True)  # fmt: skip


def _seq(max_length, vocab=30_000):
    return dict(type="seq", encoder="sequence", decoder="sequence", vocab_size=vocab,
                max_length=max_length, sincos_pos_emb=True)  # fmt: skip


# ml-4m's fourm/data/modality_info.py MODALITY_INFO, restricted to what builds FourM's embeddings.
# input_size None = the config's image_size (ml-4m's info.get('input_size', image_size)).
ML4M_MODALITIES = {
    "rgb@224": _pixels(224),
    "rgb@448": _pixels(448),
    "caption": _seq(256),
    "det": _seq(256),
    "metadata": _seq(40),
    "human_poses": _seq(263),
    "color_palette": _seq(23),
    "sam_instance": _seq(290),
    "t5_caption": dict(
        type="seq_emb",
        encoder="sequence_emb",
        decoder=None,
        max_length=77,
        orig_emb_dim=4096,
        sincos_pos_emb=True,
    ),
    "tok_rgb@224": _img_tok(16384),
    "tok_depth@224": _img_tok(8192),
    "tok_normal@224": _img_tok(8192),
    "tok_semseg@224": _img_tok(4096),
    "tok_clip@224": _img_tok(8192),
    "tok_canny_edge@224": _img_tok(8192),
    "tok_sam_edge@224": _img_tok(8192),
    "tok_dinov2@224": _img_tok(8192, patch_size=14),
    "tok_imagebind@224": _img_tok(8192, patch_size=14),
    "tok_dinov2_global": _img_tok(8192, None, 56, sincos=False),
    "tok_imagebind_global": _img_tok(8192, None, 56, sincos=False),
    "tok_rgb@448": _img_tok(16384, 448),
    "tok_depth@448": _img_tok(8192, 448),
    "tok_normal@448": _img_tok(8192, 448),
    "tok_semseg@448": _img_tok(4096, 448),
    "tok_clip@448": _img_tok(8192, 448),
}
_OVERRIDABLE = {"vocab_size", "input_size", "patch_size", "max_length", "num_channels",
                "orig_emb_dim", "sincos_pos_emb"}  # fmt: skip

_TINY_4M = {
    "tok_rgb@224": dict(vocab_size=96, input_size=64, patch_size=16),
    "tok_depth@224": dict(vocab_size=64, input_size=64, patch_size=16),
    "tok_normal@224": dict(vocab_size=72, input_size=64, patch_size=16),
    "tok_semseg@224": dict(vocab_size=48, input_size=64, patch_size=16),
    "tok_clip@224": dict(vocab_size=80, input_size=64, patch_size=16),
    "rgb@224": dict(input_size=64, patch_size=16),
    "caption": dict(vocab_size=100, max_length=24),
    "det": dict(vocab_size=100, max_length=24),
}
_TINY_4M21 = {
    **_TINY_4M,
    "t5_caption": dict(max_length=12, orig_emb_dim=24),
    "metadata": dict(vocab_size=100, max_length=16),
    "human_poses": dict(vocab_size=100, max_length=20),
    "color_palette": dict(vocab_size=100, max_length=12),
    "sam_instance": dict(vocab_size=100, max_length=20),
    "tok_canny_edge@224": dict(vocab_size=56, input_size=64, patch_size=16),
    "tok_sam_edge@224": dict(vocab_size=60, input_size=64, patch_size=16),
    "tok_dinov2@224": dict(vocab_size=88, input_size=56, patch_size=14),
    "tok_imagebind@224": dict(vocab_size=92, input_size=56, patch_size=14),
    "tok_dinov2_global": dict(vocab_size=40, input_size=224, patch_size=56),
    "tok_imagebind_global": dict(vocab_size=44, input_size=224, patch_size=56),
}
_DOMAINS_4M = ["rgb@224", "tok_rgb@224", "tok_depth@224", "tok_semseg@224", "tok_normal@224",
               "tok_clip@224", "caption", "det"]  # fmt: skip
_DOMAINS_4M21 = ["caption", "t5_caption", "det", "metadata", "rgb@224", "tok_rgb@224",
                 "tok_normal@224", "tok_depth@224", "tok_semseg@224", "tok_clip@224",
                 "human_poses", "tok_dinov2@224", "tok_dinov2_global", "tok_imagebind@224",
                 "tok_imagebind_global", "tok_sam_edge@224", "tok_canny_edge@224",
                 "color_palette", "sam_instance"]  # fmt: skip


def ml4m_config(variant: str) -> dict:
    """A tiny FM config. "4m": 4M-7 style (GELU, biases, shared modality embeddings);
    "4m21": 4M-21 style (SwiGLU, no biases, norm_bias False, separate modality embeddings)."""
    common = dict(
        image_size=64, patch_size=16, encoder_depth=2, decoder_depth=2, num_heads=4,
        mlp_ratio=4.0, decoder_causal_mask=False, decoder_sep_mask=True, qk_norm=False,
        num_register_tokens=0,
    )  # fmt: skip
    if variant == "4m":
        return dict(
            domains_in=list(_DOMAINS_4M), domains_out=[d for d in _DOMAINS_4M if d != "rgb@224"],
            dim=32, act_layer="GELU", norm_bias=True, qkv_bias=True, proj_bias=True,
            mlp_bias=True, gated_mlp=False, share_modality_embeddings=True, **common,
            modality_info={k: dict(v) for k, v in _TINY_4M.items()},
        )  # fmt: skip
    if variant == "4m21":
        outs = [d for d in _DOMAINS_4M21 if d not in ("rgb@224", "t5_caption")]
        return dict(
            domains_in=list(_DOMAINS_4M21), domains_out=outs, dim=48, act_layer="SiLU",
            norm_bias=False, qkv_bias=False, proj_bias=False, mlp_bias=False, gated_mlp=True,
            share_modality_embeddings=False, **common,
            modality_info={k: dict(v) for k, v in _TINY_4M21.items()},
        )  # fmt: skip
    raise ValueError(f"ml4m_config: variant must be '4m' or '4m21', got {variant!r}")


def ml4m_modality_info(config: dict) -> dict:
    """Per domain of the config (sorted, as FM does): ML4M_MODALITIES' entry with the config's
    `modality_info` overrides applied, input_size None resolved to image_size, `num_tokens`
    (image modalities), and `id` (a distinct int per domain, ml-4m uses a name hash)."""
    overrides = config.get("modality_info", {}) or {}
    domains = sorted(set(config["domains_in"]) | set(config["domains_out"]))
    out = {}
    for i, mod in enumerate(domains):
        if mod not in ML4M_MODALITIES:
            raise ValueError(
                f"domain {mod!r}: not one of ml-4m's modalities {sorted(ML4M_MODALITIES)}"
            )
        info = dict(ML4M_MODALITIES[mod])
        extra = set(overrides.get(mod, {})) - _OVERRIDABLE
        if extra:
            raise ValueError(f"modality_info[{mod!r}]: unknown fields {sorted(extra)}")
        info.update(overrides.get(mod, {}))
        if info["type"] == "img":
            if info.get("input_size") is None:
                info["input_size"] = config["image_size"]
            g = info["input_size"] // info["patch_size"]
            info["grid"] = (g, g)
            info["num_tokens"] = g * g
        info["id"] = i
        out[mod] = info
    return out
