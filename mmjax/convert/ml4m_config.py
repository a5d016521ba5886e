"""ml-4m 4M checkpoint configs -> mmjax FourM model config and modality registry.

A released ml-4m 4M file (`FM(config)` in ml-4m) stores its model config in the safetensors
metadata, one string per key (`domains_in`, `domains_out`, `dim`, `encoder_depth`, ...,
`image_size`, `patch_size`, `norm_bias`, `act_layer`); Hugging Face copies keep it in a
`config.json`. The modalities' own facts (kind, vocabulary, token count, position embedding)
are read from the tensors' shapes and from ml-4m's modality names, which the registry keeps.
mmjax expresses the SwiGLU and GELU families with or without biases, QK-norm and register
tokens; other variants are refused, naming the setting that is not supported.
"""

import ast
import json
import math
from collections.abc import Mapping

import numpy as np

# ml-4m's sequence modalities (fourm/data/modality_info.py, type 'seq'); names may carry "@res".
SEQUENCE_NAMES = ("caption", "det", "metadata", "human_poses", "color_palette", "sam_instance")
# ml-4m's max_length of each sequence modality (its embeddings' argument). Its fixed sin-cos
# buffers keep 512 rows whatever the max_length (ml-4m slices the table's batch axis), so the
# length cannot be read from the tensors; a config's `modality_info` may override it.
MAX_LENGTHS = {"caption": 256, "det": 256, "metadata": 40, "human_poses": 263,
               "color_palette": 23, "sam_instance": 290, "t5_caption": 77}  # fmt: skip
# ml-4m's image tokenizers on the Hugging Face hub, by modality (the registry's tokenizer field
# until a converted mmjax Tokenizer bundle is given).
TOKENIZER_IDS = {
    "tok_rgb": "EPFL-VILAB/4M_tokenizers_rgb_16k_224-448",
    "tok_depth": "EPFL-VILAB/4M_tokenizers_depth_8k_224-448",
    "tok_normal": "EPFL-VILAB/4M_tokenizers_normal_8k_224-448",
    "tok_semseg": "EPFL-VILAB/4M_tokenizers_semseg_4k_224-448",
    "tok_clip": "EPFL-VILAB/4M_tokenizers_CLIP-B16_8k_224-448",
    "tok_dinov2": "EPFL-VILAB/4M_tokenizers_DINOv2-B14_8k_224-448",
    "tok_imagebind": "EPFL-VILAB/4M_tokenizers_ImageBind-H14_8k_224-448",
    "tok_dinov2_global": "EPFL-VILAB/4M_tokenizers_DINOv2-B14-global_8k_16_224",
    "tok_imagebind_global": "EPFL-VILAB/4M_tokenizers_ImageBind-H14-global_8k_16_224",
    "tok_canny_edge": "EPFL-VILAB/4M_tokenizers_edge_8k_224-512",
    "tok_sam_edge": "EPFL-VILAB/4M_tokenizers_edge_8k_224-512",
}
REQUIRED_KEYS = ("domains_in", "domains_out", "dim", "encoder_depth", "decoder_depth", "num_heads")
# config key -> the value mmjax can express
SUPPORTED = {"decoder_causal_mask": False, "decoder_sep_mask": True}
# (gated_mlp, act_layer) -> FourM mlp_type
MLP_TYPES = {(True, "SiLU"): "swiglu", (False, "GELU"): "gelu"}
SINCOS_ATOL = 1e-3  # a stored position table this close to sin-cos is the fixed one (torch
# rounds its float32 sin-cos differently from numpy, by up to ~1e-4 at position 300)


def parse_value(value):
    """One metadata string -> its value (ml-4m writes Python reprs or YAML scalars)."""
    if not isinstance(value, str):
        return value
    for parse in (ast.literal_eval, json.loads):
        try:
            return parse(value)
        except (ValueError, SyntaxError):
            continue
    lowered = value.strip().lower()
    return {"true": True, "false": False, "none": None, "null": None}.get(lowered, value)


def parse_config(metadata: Mapping) -> dict:
    """The model config from safetensors metadata or a config.json mapping."""
    config = {k: parse_value(v) for k, v in dict(metadata).items() if k != "format"}
    for key in ("domains_in", "domains_out"):
        if isinstance(config.get(key), str):  # "rgb@224-caption" style
            config[key] = config[key].split("-")
    return config


def check_config(config: Mapping) -> None:
    """Raises a ValueError naming a missing key or a setting mmjax cannot express."""
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ValueError(
            f"ml-4m config: missing {missing}; an ml-4m 4M config has {list(REQUIRED_KEYS)} "
            "(pass --config FILE.json when the checkpoint carries no metadata)"
        )
    for key, want in SUPPORTED.items():
        if key in config and config[key] != want:
            raise ValueError(
                f"ml-4m config: {key}={config[key]!r} is not supported (mmjax expresses "
                f"{key}={want!r})"
            )
    mlp_type(config)


def mlp_type(config: Mapping) -> str:
    """FourM's mlp_type for ml-4m's (gated_mlp, act_layer)."""
    key = (bool(config.get("gated_mlp", False)), str(config.get("act_layer", "GELU")))
    if key not in MLP_TYPES:
        raise ValueError(
            f"ml-4m config: gated_mlp={key[0]} with act_layer={key[1]!r} is not supported; "
            f"expected one of {sorted(MLP_TYPES)} (SwiGLU or GELU MLP)"
        )
    return MLP_TYPES[key]


def base_name(name: str) -> str:
    """ml-4m modality name without its "@resolution" suffix."""
    return name.split("@")[0]


def modality_kind(name: str, keys: set) -> str:
    """mmjax kind of ml-4m modality `name` from the tensors it owns."""
    enc = f"encoder_embeddings.{name}."
    if f"{enc}proj.weight" in keys:
        return "pixels"
    if any(k.startswith(f"{enc}emb_proj.") for k in keys):
        return "sequence_embedding"
    return "sequence" if base_name(name) in SEQUENCE_NAMES else "image_tokens"


def _square_grid(name: str, n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"ml-4m modality {name!r}: {n} position rows is not a square grid")
    return (side, side)


def _omega(n: int) -> np.ndarray:
    """ml-4m's float32 frequencies 1 / 10000 ** (arange(n) / n), each op rounded to float32."""
    k = (np.arange(n, dtype=np.float32) / np.float32(n)).astype(np.float32)
    return np.float32(1.0) / (10000.0 ** k.astype(np.float64)).astype(np.float32)


def _sin_cos(angles: np.ndarray) -> list[np.ndarray]:
    """float32 angles -> [sin, cos], correctly rounded to float32 (as torch's kernels are)."""
    angles = angles.astype(np.float32).astype(np.float64)
    return [np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)]


def ml4m_sincos(kind: str, num_tokens: int, grid, width: int) -> np.ndarray:
    """ml-4m's sin-cos position buffer [num_tokens, width] of a modality, rounded as ml-4m's
    float32 computation rounds it (the same table as `mmjax.nn.sincos_1d` /
    `sincos_2d(layout="ml4m")` up to float32 rounding)."""
    if kind in ("sequence", "sequence_embedding"):
        angles = np.arange(num_tokens, dtype=np.float32)[:, None] * _omega(width // 2)[None]
        return np.concatenate(_sin_cos(angles), axis=1)
    h = grid[0]
    n = np.arange(num_tokens)
    omega = _omega(width // 4)[None]
    a = (n // h).astype(np.float32)[:, None] * omega
    b = (n % h).astype(np.float32)[:, None] * omega
    return np.concatenate([*_sin_cos(a), *_sin_cos(b)], axis=1)


def is_learned(stored: np.ndarray, fixed: np.ndarray) -> bool:
    """A stored position table is learned unless it is ml-4m's sin-cos table."""
    return stored.shape != fixed.shape or not np.allclose(stored, fixed, atol=SINCOS_ATOL, rtol=0)


def modality_entry(name: str, state: Mapping, config: Mapping, width: int) -> dict:
    """One registry entry (`build_registry` fields) of ml-4m modality `name`, from its tensors."""
    keys = set(state)
    kind = modality_kind(name, keys)
    prefixes = [f"{side}_embeddings.{name}." for side in ("encoder", "decoder")]
    pos_key = next((p + "pos_emb" for p in prefixes if p + "pos_emb" in keys), None)
    if pos_key is None:
        raise ValueError(f"ml-4m checkpoint: no pos_emb tensor for modality {name!r}")
    n = rows = int(np.shape(state[pos_key])[1])
    info = (config.get("modality_info") or {}).get(name, {})
    if kind in ("sequence", "sequence_embedding"):
        n = int(info.get("max_length", MAX_LENGTHS.get(base_name(name), rows)))
        if n > rows:
            raise ValueError(
                f"ml-4m checkpoint: {pos_key} has {rows} rows, fewer than {name!r}'s max_length {n}"
            )
    entry: dict = {"kind": kind}
    if kind == "pixels":
        w = np.shape(state[f"encoder_embeddings.{name}.proj.weight"])  # [D, p * p * C]
        grid = _square_grid(name, n)
        patch = int(info.get("patch_size", config.get("patch_size", 16)))
        if w[1] % (patch * patch):
            raise ValueError(
                f"ml-4m checkpoint: encoder_embeddings.{name}.proj.weight has {w[1]} inputs, "
                f"not a multiple of patch_size**2 = {patch * patch}"
            )
        entry.update(grid=list(grid), patch_size=patch, channels=w[1] // (patch * patch))
    elif kind == "sequence_embedding":
        w = np.shape(state[f"encoder_embeddings.{name}.emb_proj.weight"])  # [D, E]
        entry.update(max_length=n, embed_dim=int(w[1]))
    else:
        tok_key = next(p + "token_emb.weight" for p in prefixes if p + "token_emb.weight" in keys)
        entry["vocab_size"] = int(np.shape(state[tok_key])[0])
        if kind == "sequence":
            entry["max_length"] = n
        else:
            entry["grid"] = list(_square_grid(name, n))
            entry["tokenizer"] = TOKENIZER_IDS.get(base_name(name))
    grid = entry.get("grid")
    fixed = ml4m_sincos(kind, rows, grid, width)
    if is_learned(np.asarray(state[pos_key])[0], fixed):
        entry["learned_positions"] = True
    return entry


def mlp_hidden(config: Mapping) -> int:
    """ml-4m's MLP hidden width: int(dim * mlp_ratio), times 2/3 (rounded down) for SwiGLU."""
    hidden = int(int(config["dim"]) * float(config.get("mlp_ratio", 4.0)))
    return int(2 * hidden / 3) if mlp_type(config) == "swiglu" else hidden


def model_config(config: Mapping) -> dict:
    """The `build_fourm` config that expresses ml-4m `config` exactly."""
    return {
        "width": int(config["dim"]),
        "encoder_depth": int(config["encoder_depth"]),
        "decoder_depth": int(config["decoder_depth"]),
        "num_heads": int(config["num_heads"]),
        "mlp_dim": mlp_hidden(config),
        "qk_norm": bool(config.get("qk_norm", False)),
        "mlp_type": mlp_type(config),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "proj_bias": bool(config.get("proj_bias", True)),
        "mlp_bias": bool(config.get("mlp_bias", True)),
        "norm_bias": bool(config.get("norm_bias", True)),
        "context_proj_bias": True,
        "decoder_tables": True,
        "pixel_norm": "imagenet",
        "patch_bias": False,
        "sincos_layout": "ml4m",
        "empty_context": "uniform",
        "num_register_tokens": int(config.get("num_register_tokens", 0) or 0),
    }


def registry_config(config: Mapping, state: Mapping) -> dict:
    """{name: fields} of every domain in domains_in | domains_out, ml-4m names kept."""
    width = int(config["dim"])
    names = sorted(set(config["domains_in"]) | set(config["domains_out"]))
    return {name: modality_entry(name, state, config, width) for name in names}
