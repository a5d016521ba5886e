"""4M masking on the host (Grain workers): Dirichlet token budgets over mixtures of
input/target modality sets, span masking of sequences, static-shape masked batches; ml-4m's
budget and span rules as options (`FourMMasking(budget_rule=, span_rule=)`)."""

from mmjax.fourm.masking.masker import FourMMasking
from mmjax.fourm.masking.mixtures import (
    MIXTURES,
    Component,
    Mixture,
    build_mixture,
    sample_budgets,
)
from mmjax.fourm.masking.ml4m_budgets import sample_budgets_clamped
from mmjax.fourm.masking.ml4m_spans import ml4m_span_mask
from mmjax.fourm.masking.spans import span_mask, unmask

__all__ = [
    "MIXTURES",
    "Component",
    "FourMMasking",
    "Mixture",
    "build_mixture",
    "ml4m_span_mask",
    "sample_budgets",
    "sample_budgets_clamped",
    "span_mask",
    "unmask",
]
