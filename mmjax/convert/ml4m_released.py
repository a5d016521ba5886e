"""The released ml-4m 4M models as mmjax configs, without their weights.

ml-4m's modality table (its `fourm/data/modality_info.py`: vocabulary, token grid, maximum
length, position embedding of each modality at 224 px) and the trunk shapes of its released
4M-7 and 4M-21 models (`fm.py`'s `fm_{base,large,xlarge}_*` constructors) give the FourM
config and modality registry that `convert_ml4m` builds from those files' tensors. With them a
converted model's memory can be checked on a TPU topology before anything is downloaded
(`configs/fourm_ml4m.py`, `launch/aot_compile.py`), and a fine-tuning run sized.
"""

from mmjax.convert.ml4m_config import MAX_LENGTHS, TOKENIZER_IDS, base_name, model_config

TEXT_VOCAB = 30_000  # ml-4m's WordPiece vocabulary, shared by every text modality
T5_WIDTH = 4096  # T5-XXL embeddings (t5_caption)


def _tokens(vocab: int, grid: int, learned: bool = False) -> dict:
    entry = {"kind": "image_tokens", "vocab_size": vocab, "grid": (grid, grid)}
    return entry | ({"learned_positions": True} if learned else {})


def _sequence(name: str) -> dict:
    return {"kind": "sequence", "vocab_size": TEXT_VOCAB, "max_length": MAX_LENGTHS[name]}


# name -> registry entry; grids at 224 px: 16 px patches -> 14 x 14, 14 px -> 16 x 16, global
# features -> 4 x 4 tokens with learned positions (ml-4m's sincos_pos_emb=False).
MODALITIES = {
    "rgb@224": {"kind": "pixels", "grid": (14, 14), "patch_size": 16, "channels": 3},
    "tok_rgb@224": _tokens(16384, 14),
    "tok_depth@224": _tokens(8192, 14),
    "tok_normal@224": _tokens(8192, 14),
    "tok_semseg@224": _tokens(4096, 14),
    "tok_clip@224": _tokens(8192, 14),
    "tok_canny_edge@224": _tokens(8192, 14),
    "tok_sam_edge@224": _tokens(8192, 14),
    "tok_dinov2@224": _tokens(8192, 16),
    "tok_imagebind@224": _tokens(8192, 16),
    "tok_dinov2_global": _tokens(8192, 4, learned=True),
    "tok_imagebind_global": _tokens(8192, 4, learned=True),
    **{n: _sequence(n) for n in ("caption", "det", "metadata", "human_poses", "color_palette")},
    "sam_instance": _sequence("sam_instance"),
    "t5_caption": {
        "kind": "sequence_embedding",
        "max_length": MAX_LENGTHS["t5_caption"],
        "embed_dim": T5_WIDTH,
    },
}
for _name, _entry in MODALITIES.items():
    if _entry["kind"] == "image_tokens" and base_name(_name) in TOKENIZER_IDS:
        _entry["tokenizer"] = TOKENIZER_IDS[base_name(_name)]

_4M7 = ("rgb@224", "tok_rgb@224", "tok_depth@224", "tok_normal@224", "tok_semseg@224",
        "tok_clip@224", "caption", "det")  # fmt: skip
_4M21 = (*_4M7, "t5_caption", "metadata", "human_poses", "color_palette", "sam_instance",
         "tok_canny_edge@224", "tok_sam_edge@224", "tok_dinov2@224", "tok_imagebind@224",
         "tok_dinov2_global", "tok_imagebind_global")  # fmt: skip
INPUT_ONLY = ("rgb@224", "t5_caption")  # no decoder embedding in ml-4m

# ml-4m's trunks: (dim, encoder depth, decoder depth, heads)
_TRUNKS = {"B": (768, 12, 12, 12), "L": (1024, 24, 24, 16), "XL": (2048, 24, 24, 32)}
# every released model: fm_{base,large,xlarge}_*_swiglu_nobias
_SWIGLU_NOBIAS = {"act_layer": "SiLU", "gated_mlp": True, "norm_bias": False,
                  "qkv_bias": False, "proj_bias": False, "mlp_bias": False}  # fmt: skip


def _released(domains, trunk: str, family: dict) -> dict:
    """The metadata config of a released file (its FM constructor's arguments)."""
    dim, enc, dec, heads = _TRUNKS[trunk]
    return {
        "domains_in": list(domains),
        "domains_out": [d for d in domains if d not in INPUT_ONLY],
        "dim": dim, "encoder_depth": enc, "decoder_depth": dec, "num_heads": heads,
        "mlp_ratio": 4.0, "image_size": 224, "patch_size": 16, **family,
    }  # fmt: skip


# Hugging Face ids of ml-4m's released models -> the config their files' metadata holds.
MODELS = {
    **{f"4M-7_{t}_CC12M": _released(_4M7, t, _SWIGLU_NOBIAS) for t in ("B", "L", "XL")},
    **{f"4M-21_{t}": _released(_4M21, t, _SWIGLU_NOBIAS) for t in ("B", "L", "XL")},
}


def released_config(model: str) -> dict:
    """The ml-4m config of released model `model` (a MODELS key, "EPFL-VILAB/" optional)."""
    key = model.removeprefix("EPFL-VILAB/")
    if key not in MODELS:
        raise ValueError(f"ml-4m model {model!r}: expected one of {sorted(MODELS)}")
    return dict(MODELS[key])


def released_fourm(model: str) -> tuple[dict, dict]:
    """(the `build_fourm` config, the `build_registry` config) of released model `model`: what
    `convert_ml4m` builds from its file."""
    config = released_config(model)
    names = sorted(set(config["domains_in"]) | set(config["domains_out"]))
    return model_config(config), {n: dict(MODALITIES[n]) for n in names}
