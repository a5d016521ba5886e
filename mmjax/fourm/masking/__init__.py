"""4M masking on the host (Grain workers): Dirichlet token budgets over mixtures of
input/target modality sets, span masking of sequences, static-shape masked batches."""

from mmjax.fourm.masking.masker import FourMMasking
from mmjax.fourm.masking.mixtures import (
    MIXTURES,
    Component,
    Mixture,
    build_mixture,
    sample_budgets,
)
from mmjax.fourm.masking.spans import span_mask, unmask

__all__ = [
    "MIXTURES",
    "Component",
    "FourMMasking",
    "Mixture",
    "build_mixture",
    "sample_budgets",
    "span_mask",
    "unmask",
]
