"""4M: the modality registry, masking, the encoder-decoder and generation."""

from mmjax.fourm.masking import FourMMasking
from mmjax.fourm.mixtures import MIXTURES, Component, Mixture, build_mixture, sample_budgets
from mmjax.fourm.modalities import KINDS, ModalitySpec, Registry, build_registry, fourm7_modalities
from mmjax.fourm.span_masking import span_mask, unmask

__all__ = ["KINDS", "ModalitySpec", "Registry", "build_registry", "fourm7_modalities"]
__all__ += ["MIXTURES", "Component", "FourMMasking", "Mixture", "build_mixture", "sample_budgets"]
__all__ += ["span_mask", "unmask"]
from mmjax.fourm.loss import fourm_loss  # noqa: E402
from mmjax.fourm.model import FourM, example_batch  # noqa: E402
from mmjax.fourm.presets import PRESETS, build_fourm  # noqa: E402

__all__ += ["PRESETS", "FourM", "build_fourm", "example_batch", "fourm_loss"]
from mmjax.fourm.generate import GenerationStep, generate  # noqa: E402

__all__ += ["GenerationStep", "generate"]
