"""4M: the modality registry, the encoder-decoder and its loss; masking and generation
live in the `masking` and `generation` subpackages."""

from mmjax.fourm.generation import GenerationStep, generate, image_token_log_probs
from mmjax.fourm.loss import fourm_loss
from mmjax.fourm.masking import (
    MIXTURES,
    Component,
    FourMMasking,
    Mixture,
    build_mixture,
    sample_budgets,
    span_mask,
    unmask,
)
from mmjax.fourm.modalities import KINDS, ModalitySpec, Registry, build_registry, fourm7_modalities
from mmjax.fourm.model import FourM, example_batch
from mmjax.fourm.presets import PRESETS, build_fourm

__all__ = [
    "KINDS",
    "MIXTURES",
    "PRESETS",
    "Component",
    "FourM",
    "FourMMasking",
    "GenerationStep",
    "Mixture",
    "ModalitySpec",
    "Registry",
    "build_fourm",
    "build_mixture",
    "build_registry",
    "example_batch",
    "fourm7_modalities",
    "fourm_loss",
    "generate",
    "image_token_log_probs",
    "sample_budgets",
    "span_mask",
    "unmask",
]
