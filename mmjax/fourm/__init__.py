"""4M: the modality registry, masking, the encoder-decoder and generation."""

from mmjax.fourm.masking import FourMMasking
from mmjax.fourm.mixtures import MIXTURES, Component, Mixture, build_mixture, sample_budgets
from mmjax.fourm.modalities import KINDS, ModalitySpec, Registry, build_registry, fourm7_modalities
from mmjax.fourm.span_masking import span_mask, unmask

__all__ = ["KINDS", "ModalitySpec", "Registry", "build_registry", "fourm7_modalities"]
__all__ += ["MIXTURES", "Component", "FourMMasking", "Mixture", "build_mixture", "sample_budgets"]
__all__ += ["span_mask", "unmask"]
