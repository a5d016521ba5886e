"""The quantized autoencoder (encoder -> quantizer -> decoder) and `build_autoencoder`.

Model space is what the modality codec's `preprocess` produces ([B, H, W, in_channels]);
the decoder returns [B, H, W, out_channels] (the codec's `loss` and `postprocess` take it).
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.quantizers import QuantizerOutput, build_quantizer
from mmjax.tokenizers.conv import ConvDecoder, ConvEncoder
from mmjax.tokenizers.flex1d_autoencoder import (
    FLEX1D_OPTIONS,
    FLEX1D_PRESETS,
    Flex1DAutoencoder,
    flex1d_parts,
)
from mmjax.tokenizers.modalities import get_modality
from mmjax.tokenizers.patch_encoder import PatchEncoder
from mmjax.tokenizers.vit import ViTDecoder, ViTEncoder


class Autoencoder(nn.Module):
    """encoder -> quantizer -> decoder.

    Attributes:
      encoder: maps [B, H, W, C_in] to [B, H/f, W/f, D]; has `downsample_factor` (f).
      decoder: maps [B, h, w, D] back to [B, h*f, w*f, C_out].
      quantizer: any mmjax quantizer over D (its EMA state is in the STATS collection).
      in_channels: C_in, checked on every input (None: not checked).
    """

    encoder: nn.Module
    decoder: nn.Module
    quantizer: nn.Module
    in_channels: int | None = None

    @property
    def downsample_factor(self) -> int:
        return int(self.encoder.downsample_factor)

    @property
    def codebook_size(self) -> int:
        return int(self.quantizer.codebook_size)

    def grid_shape(self, image_size) -> tuple[int, int]:
        """Token grid (h, w) for an image size (int or (H, W)); needs no parameters."""
        hw = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
        f = self.downsample_factor
        if len(hw) != 2 or any(int(s) < f or int(s) % f for s in hw):
            raise ValueError(
                f"Autoencoder: image size {image_size} must be positive multiples of the "
                f"downsampling factor {f}"
            )
        return int(hw[0]) // f, int(hw[1]) // f

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"Autoencoder: input must be [B, H, W, C], got shape {x.shape}")
        if self.in_channels is not None and x.shape[-1] != self.in_channels:
            raise ValueError(
                f"Autoencoder: input must have {self.in_channels} channels, got shape {x.shape}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"Autoencoder: input must be floating point, got {x.dtype}")
        self.grid_shape(x.shape[1:3])

    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
        """x [B, H, W, C_in] -> (y [B, H, W, C_out], QuantizerOutput)."""
        self._check_input(x)
        q = self.quantizer(self.encoder(x), train=train)
        return self.decoder(q.quantized), q

    def encode(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, C_in] -> int32 tokens [B, h, w] (plus a depth axis for residual)."""
        self._check_input(x)
        return self.quantizer(self.encoder(x), train=False).indices

    def decode(self, tokens: jax.Array) -> jax.Array:
        """int tokens from `encode` -> y [B, H, W, C_out], as `__call__` would output."""
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"Autoencoder.decode: tokens must be integers, got {tokens.dtype}")
        codes = self.quantizer.decode_indices(tokens)
        if codes.ndim != 4:
            raise ValueError(
                f"Autoencoder.decode: tokens of shape {tokens.shape} do not form a [B, h, w] grid"
            )
        return self.decoder(codes.astype(jnp.float32))


CONV_PRESETS = {
    # factor 8: 64 px -> 8 x 8 tokens; trains in minutes on a CPU
    "tiny": dict(
        channels=32, channel_mult=(1, 2, 2, 4), num_res_blocks=1, attention=False, z_channels=8
    ),
    "small": dict(
        channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2, attention=True, z_channels=16
    ),
    # VQGAN f16 (ch 128, mult 1,1,2,2,4, two res blocks, attention at the lowest resolution)
    "base": dict(
        channels=128,
        channel_mult=(1, 1, 2, 2, 4),
        num_res_blocks=2,
        attention=True,
        z_channels=256,
    ),
}
VIT_PRESETS = {
    "tiny": dict(patch_size=8, width=128, depth=2, heads=4, mlp_dim=512, z_dim=32),
    "small": dict(patch_size=8, width=384, depth=6, heads=6, mlp_dim=1536, z_dim=32),
    # ViT-VQGAN base trunk (12 x 768, MLP 3072, patch 8)
    "base": dict(patch_size=8, width=768, depth=12, heads=12, mlp_dim=3072, z_dim=32),
}
PRESETS = {"conv": CONV_PRESETS, "vit": VIT_PRESETS, "flex1d": FLEX1D_PRESETS}
_CONV_ONLY = ("groups", "encoder")
# ViT options beyond the presets' fields (see mmjax.tokenizers.vit); `decoder` overrides the
# decoder's patch_size, width, depth, heads, mlp_dim where it differs from the encoder.
_VIT_ONLY = ("final_norm", "pos_emb", "post_mlp", "in_embed_dim", "decoder")
_VIT_DECODER_KEYS = ("patch_size", "width", "depth", "heads", "mlp_dim")
_OPTIONS = {"conv": _CONV_ONLY, "vit": _VIT_ONLY, "flex1d": FLEX1D_OPTIONS}
CONV_ENCODERS = ("conv", "patch")


def _as_dict(config, what: str) -> dict:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"build_autoencoder: {what} must be a ConfigDict or dict, got {type(config)}")


def _with_dim(qcfg: dict, dim: int) -> dict:
    """The quantizer config with `dim` (or its base's) set to the encoder output width."""
    qcfg = dict(qcfg)
    if qcfg.get("type") in ("rvq", "msrvq") and "base" in qcfg:
        qcfg["base"] = _with_dim(_as_dict(qcfg["base"], "quantizer base"), dim)
        return qcfg
    if qcfg.get("dim") not in (None, dim):
        raise ValueError(
            f"build_autoencoder: quantizer dim={qcfg['dim']} differs from the encoder's output "
            f"width {dim} (z_channels / z_dim); leave the quantizer's dim unset"
        )
    qcfg["dim"] = dim
    return qcfg


def _conv_family_encoder(kind: str, fields: dict) -> nn.Module:
    if kind not in CONV_ENCODERS:
        raise ValueError(
            f"build_autoencoder: conv encoder must be one of {CONV_ENCODERS}, got {kind!r}"
        )
    if kind == "conv":
        return ConvEncoder(**fields)
    mult = fields["channel_mult"]
    return PatchEncoder(
        patch_size=2 ** (len(mult) - 1),
        width=fields["channels"] * mult[-1],
        depth=fields["num_res_blocks"] + 1,
        z_channels=fields["z_channels"],
    )


def build_autoencoder(model_config, quantizer_config, modality) -> Autoencoder | Flex1DAutoencoder:
    """An Autoencoder (or, for type "flex1d", a Flex1DAutoencoder) for `modality` (a name in
    MODALITIES or a codec).

    model_config: `type` ("conv", "vit" or "flex1d"), `size` ("tiny", "small", "base"; default
    "tiny") and optional overrides of the preset's fields (conv: channels, channel_mult,
    num_res_blocks, attention, z_channels, groups, and `encoder`: "conv" (default) or "patch",
    a PatchEncoder whose codes depend only on their own patch (width channels *
    channel_mult[-1], num_res_blocks + 1 blocks; the decoder is the same); vit: patch_size,
    width, depth, heads, mlp_dim, z_dim, and the options final_norm, pos_emb, post_mlp,
    in_embed_dim, decoder (a dict overriding the decoder's patch_size, width, depth, heads,
    mlp_dim); flex1d: patch_size, width, depth, heads, mlp_dim, z_dim, num_registers (K, the
    most tokens per image), and image_size (required), causal_registers, keep (the nested
    dropout distribution, see mmjax.tokenizers.flex1d), decoder (a dict overriding the
    decoder's width, depth, heads, mlp_dim), trunk ("vit" or "mlp", see
    mmjax.tokenizers.flex1d_mlp)). The quantizer's `dim` is set to the encoder's output width.
    """
    cfg = _as_dict(model_config, "model_config")
    kind = cfg.pop("type", None)
    if kind not in PRESETS:
        raise ValueError(
            f"build_autoencoder: model type must be one of {tuple(PRESETS)}, got {kind!r}"
        )
    size = cfg.pop("size", "tiny")
    cfg.pop("compute_dtype", None)  # a training option (mmjax.train), not a model field
    if size not in PRESETS[kind]:
        raise ValueError(
            f"build_autoencoder: size must be one of {tuple(PRESETS[kind])}, got {size!r}"
        )
    fields = dict(PRESETS[kind][size])
    allowed = set(fields) | set(_OPTIONS[kind])
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(
            f"build_autoencoder: unknown key(s) {unknown} for type={kind!r}; "
            f"expected some of {sorted(allowed)}"
        )
    fields.update({k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    if hasattr(fields.get("decoder"), "to_dict"):
        fields["decoder"] = fields["decoder"].to_dict()
    codec = get_modality(modality)
    qcfg = _as_dict(quantizer_config, "quantizer_config")
    if kind == "flex1d":
        if qcfg.get("type") == "msrvq":
            raise ValueError(
                "build_autoencoder: type='flex1d' needs a per-token quantizer; msrvq quantizes "
                "2D grids"
            )
        encoder, decoder, keep = flex1d_parts(fields, codec.out_channels)
        quantizer = build_quantizer(_with_dim(qcfg, encoder.z_dim))
        return Flex1DAutoencoder(
            encoder, decoder, quantizer, in_channels=codec.in_channels, keep=keep
        )
    if kind == "conv":
        z_dim = fields["z_channels"]
        enc_kind = fields.pop("encoder", "conv")
        shared = {k: v for k, v in fields.items() if k != "z_channels"}
        encoder = _conv_family_encoder(enc_kind, fields)
        decoder = ConvDecoder(**shared, out_channels=codec.out_channels)
    else:
        z_dim = fields["z_dim"]
        dec_over = dict(fields.pop("decoder", None) or {})
        bad = sorted(set(dec_over) - set(_VIT_DECODER_KEYS))
        if bad:
            raise ValueError(
                f"build_autoencoder: unknown vit decoder key(s) {bad}; expected some of "
                f"{list(_VIT_DECODER_KEYS)}"
            )
        shared = {k: v for k, v in fields.items() if k not in ("z_dim", "in_embed_dim")}
        shared.update(dec_over)
        for part in (fields, shared):
            four = 4 if part.get("pos_emb", "sincos") == "sincos" else 1
            if part["width"] % four or part["width"] % part["heads"]:
                raise ValueError(
                    f"build_autoencoder: vit width {part['width']} must be divisible by "
                    f"heads={part['heads']} (and by 4 for sin-cos positions)"
                )
        encoder = ViTEncoder(**fields)
        decoder = ViTDecoder(**shared, out_channels=codec.out_channels)
    quantizer = build_quantizer(_with_dim(qcfg, z_dim))
    return Autoencoder(encoder, decoder, quantizer, in_channels=codec.in_channels)
