"""Tokenizers: quantized conv and ViT autoencoders, flexible-length 1D tokenizers, per-modality
codecs and losses, the PatchGAN discriminator and an optional perceptual loss. Uses quantizers
and nn only."""

from mmjax.tokenizers.autoencoder import (
    CONV_PRESETS,
    PRESETS,
    VIT_PRESETS,
    Autoencoder,
    build_autoencoder,
)
from mmjax.tokenizers.bundle import Tokenizer
from mmjax.tokenizers.conv import ConvDecoder, ConvEncoder
from mmjax.tokenizers.discriminator import (
    PatchDiscriminator,
    adaptive_weight,
    adaptive_weight_from_grads,
    d_hinge_loss,
    g_hinge_loss,
    gan_start_step,
)
from mmjax.tokenizers.flex1d import (
    KEEP_DISTRIBUTIONS,
    NESTED_DROPOUT,
    Flex1DDecoder,
    Flex1DEncoder,
    kept_length_support,
    sample_kept_lengths,
)
from mmjax.tokenizers.flex1d_autoencoder import FLEX1D_PRESETS, Flex1DAutoencoder
from mmjax.tokenizers.modalities import MODALITIES, get_modality
from mmjax.tokenizers.perceptual import PerceptualLoss, load_perceptual_weights, perceptual_loss
from mmjax.tokenizers.vit import ViTDecoder, ViTEncoder

__all__ = [
    "CONV_PRESETS",
    "FLEX1D_PRESETS",
    "KEEP_DISTRIBUTIONS",
    "MODALITIES",
    "NESTED_DROPOUT",
    "PRESETS",
    "VIT_PRESETS",
    "Autoencoder",
    "ConvDecoder",
    "ConvEncoder",
    "Flex1DAutoencoder",
    "Flex1DDecoder",
    "Flex1DEncoder",
    "PatchDiscriminator",
    "PerceptualLoss",
    "Tokenizer",
    "ViTDecoder",
    "ViTEncoder",
    "adaptive_weight",
    "adaptive_weight_from_grads",
    "build_autoencoder",
    "d_hinge_loss",
    "g_hinge_loss",
    "gan_start_step",
    "get_modality",
    "kept_length_support",
    "load_perceptual_weights",
    "perceptual_loss",
    "sample_kept_lengths",
]
