"""ml-4m VQ-VAE configs: reading them from safetensors metadata, checking that mmjax can
express them, deriving the encoder/decoder architectures from config and tensor shapes, and
the mmjax Tokenizer configs they become (and back).

ml-4m stores a tokenizer's constructor arguments (fourm/vq/vqvae.py VQVAE) in the safetensors
header's `__metadata__`, one string per key, and reads them back with YAML (`None` as null).
"""

import json
from collections.abc import Mapping

import numpy as np
import yaml
from etils import epath

# Transformer heads of ml-4m's ViT presets (fourm/vq/models/vit_models.py); other encoder /
# decoder names need `enc_num_heads` / `dec_num_heads` in the config.
PRESET_HEADS = {"vit_s": 8, "vit_b": 12, "vit_l": 16}
PRESET_WIDTHS = {"vit_s": 512, "vit_b": 768, "vit_l": 1024}
# Keys only diffusion-decoder tokenizers (DiVAE, VQControlNet) have.
DIFFUSION_KEYS = ("beta_schedule", "num_train_timesteps", "prediction_type", "scheduler")


class ConversionError(ValueError):
    """A checkpoint or bundle that cannot be converted; the message names the thing."""


def parse_metadata(metadata: Mapping) -> dict:
    """ml-4m's reading of safetensors metadata: each value YAML-parsed ('None' as null),
    left a string when that fails."""
    out = {}
    for key, value in dict(metadata or {}).items():
        if not isinstance(value, str) or len(value) > 10_000:
            out[key] = value
            continue
        try:
            out[key] = yaml.safe_load(value.replace("None", "null"))
        except yaml.YAMLError:
            out[key] = value
    return out


def format_metadata(config: Mapping) -> dict:
    """The reverse of `parse_metadata`: every value as its Python `str`."""
    return {str(k): str(v) for k, v in config.items()}


def load_config(config) -> dict:
    """A config given as a dict, a JSON string path (local or gs://) or None (-> {})."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    path = epath.Path(config)
    if not path.exists():
        raise ConversionError(f"ml-4m config {config}: no such file")
    try:
        return dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise ConversionError(f"ml-4m config {config}: not a JSON object ({err})") from err


def check_supported(config: dict, names) -> None:
    """Refuses what is not a ViT VQ-VAE that mmjax expresses exactly, naming the key."""
    names = set(names)
    fourm = sorted(n for n in names if n.startswith(("encoder_embeddings.", "decoder_embeddings.")))
    if fourm:
        raise ConversionError(
            f"this is a 4M model checkpoint (tensor {fourm[0]!r}), not a VQ-VAE tokenizer; "
            "convert it with mmjax's 4M converter"
        )
    diffusion = [k for k in DIFFUSION_KEYS if k in config]
    if diffusion or any(".controlnet" in n or n.startswith("controlnet") for n in names):
        raise ConversionError(
            f"a diffusion-decoder tokenizer (DiVAE / VQControlNet; config key(s) {diffusion}); "
            "only ViT VQ-VAE tokenizers convert"
        )
    if "quantize._codebook.embed" not in names:
        raise ConversionError(
            "missing tensor 'quantize._codebook.embed': not an ml-4m VQ-VAE tokenizer checkpoint"
        )
    if "enc_type" not in config and "dec_type" not in config:
        raise ConversionError(
            "no VQVAE config: the file's metadata has no 'enc_type'/'dec_type'; pass the "
            "tokenizer's config (a dict or JSON file) as `config`"
        )
    for key, want in (("enc_type", "vit"), ("dec_type", "vit")):
        got = config.get(key)
        if got is None or want not in str(got):
            raise ConversionError(
                f"config {key}={got!r}: only ml-4m's ViT encoders/decoders ('vit_*') convert "
                "(MLP tokenizers of global features and UNet/UViT decoders do not)"
            )
    rules = {
        "quant_type": ("lucid", "only the 'lucid' (VectorQuantizerLucid) quantizer converts"),
        "num_codebooks": (1, "only one codebook converts"),
        "norm_codes": (True, "only the cosine-similarity codebook (norm_codes=True) converts"),
        "undo_std": (False, "undo_std=True (ImageNet de-standardization) has no mmjax codec"),
        "out_conv": (False, "out_conv=True (ConvNeXt blocks after the decoder) does not convert"),
    }
    defaults = {"quant_type": "lucid", "num_codebooks": 1, "norm_codes": True}
    for key, (want, why) in rules.items():
        got = config.get(key, defaults.get(key, want))
        if got != want:
            raise ConversionError(f"config {key}={got!r}: {why}")
    if any(n.startswith("decoder.out_conv.") for n in names):
        raise ConversionError("tensor 'decoder.out_conv.*' present: out_conv does not convert")


def _get(shapes: dict, name: str) -> tuple:
    if name not in shapes:
        raise ConversionError(f"missing tensor {name!r}")
    return tuple(shapes[name])


def _heads(config: dict, side: str, width: int) -> int:
    kind = str(config[f"{side}_type"]).rsplit("_", 1)[0]
    heads = config.get(f"{side}_num_heads", PRESET_HEADS.get(kind))
    if heads is None:
        raise ConversionError(
            f"config {side}_type={config[f'{side}_type']!r}: unknown preset; give "
            f"'{side}_num_heads' in the config (presets: {sorted(PRESET_HEADS)})"
        )
    if kind in PRESET_WIDTHS and f"{side}_num_heads" not in config:
        tensor = "encoder.proj.weight" if side == "enc" else "post_quant_proj.weight"
        if width != PRESET_WIDTHS[kind]:
            raise ConversionError(
                f"tensor {tensor!r} gives width {width}, but {side}_type "
                f"{config[f'{side}_type']!r} has width {PRESET_WIDTHS[kind]}"
            )
    if width % int(heads):
        raise ConversionError(f"{side} width {width} is not divisible by {heads} heads")
    return int(heads)


def _side(shapes: dict, config: dict, side: str, width: int, patch: int) -> dict:
    name = {"enc": "encoder", "dec": "decoder"}[side]
    pos = _get(shapes, f"{name}.pos_emb")
    if len(pos) != 4 or pos[2] != pos[3]:
        raise ConversionError(
            f"tensor '{name}.pos_emb' has shape {pos}; expected [1, D, n, n] (a square grid)"
        )
    depth = len({n.split(".")[2] for n in shapes if n.startswith(f"{name}.blocks.")})
    if depth == 0:
        raise ConversionError(f"missing tensors '{name}.blocks.0.*'")
    return {
        "width": width,
        "heads": _heads(config, side, width),
        "depth": depth,
        "mlp_dim": _get(shapes, f"{name}.blocks.0.mlp.fc1.weight")[0],
        "grid": pos[2],
        "post_mlp": bool(config.get("post_mlp", False)),
        "patch_size": patch,
    }


def architecture(config: dict, shapes: dict) -> dict:
    """Encoder/decoder architectures, latent_dim, codebook_size, n_labels from the config
    and the tensor shapes (widths, depths, MLP widths, grids); the per-tensor check of every
    shape against them is left to `ml4m_vqvae_names.entries`."""
    n_labels = config.get("n_labels")
    proj = _get(shapes, "encoder.proj.weight")
    if len(proj) != 4:
        raise ConversionError(f"tensor 'encoder.proj.weight' has shape {proj}; expected 4D")
    patch_proj = bool(config.get("patch_proj", True))
    p_enc = int(config.get("patch_size", 16)) if patch_proj else 1
    p_dec = int(config.get("patch_size_dec") or config.get("patch_size", 16)) if patch_proj else 1
    enc = _side(shapes, config, "enc", proj[0], p_enc)
    enc["in_channels"] = proj[1]
    dec_width = _get(shapes, "post_quant_proj.weight")[0]
    dec = _side(shapes, config, "dec", dec_width, p_dec)
    dec["out_channels"] = int(n_labels) if n_labels else proj[1]
    if enc["grid"] != dec["grid"]:
        raise ConversionError(
            f"tensors 'encoder.pos_emb' and 'decoder.pos_emb' have grids {enc['grid']} and "
            f"{dec['grid']}; mmjax needs one token grid"
        )
    embed = _get(shapes, "quantize._codebook.embed")
    return {
        "enc": enc, "dec": dec, "latent_dim": embed[1], "codebook_size": embed[0],
        "n_labels": int(n_labels) if n_labels else None,
    }  # fmt: skip


def mmjax_configs(arch: dict, config: dict) -> dict:
    """Tokenizer.save arguments (modality, modality_options, model_config,
    quantizer_config, resolution) of an ml-4m VQ-VAE architecture."""
    enc, dec = arch["enc"], arch["dec"]
    model = {
        "type": "vit",
        "patch_size": enc["patch_size"], "width": enc["width"], "depth": enc["depth"],
        "heads": enc["heads"], "mlp_dim": enc["mlp_dim"], "z_dim": arch["latent_dim"],
        "final_norm": False, "pos_emb": "learned", "post_mlp": enc["post_mlp"],
        "decoder": {k: dec[k] for k in ("patch_size", "width", "depth", "heads", "mlp_dim")},
    }  # fmt: skip
    if arch["n_labels"]:
        model["in_embed_dim"] = enc["in_channels"]
        modality, options = "semseg", {"num_classes": arch["n_labels"]}
    else:
        modality, options = "features", {"channels": enc["in_channels"]}
    quantizer = {
        "type": "vq", "codebook_size": arch["codebook_size"], "metric": "cosine",
        "update": "ema", "ema_decay": float(config.get("ema_decay", 0.99)),
        "beta": float(config.get("commitment_weight", 1.0)), "stored_codes_out": True,
    }  # fmt: skip
    return {
        "modality": modality, "modality_options": options, "model_config": model,
        "quantizer_config": quantizer, "resolution": enc["grid"] * enc["patch_size"],
    }  # fmt: skip


def shapes_of(tensors: Mapping) -> dict:
    return {k: tuple(np.shape(v)) for k, v in tensors.items()}
