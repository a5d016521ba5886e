"""ml-4m's Dirichlet token budgets (`FourMMasking(budget_rule="ml4m")`).

ml-4m splits a total of E tokens with Dirichlet proportions p as floor(p * E), gives each of
the E - sum(floor) tokens left to the argmax of a fresh Dirichlet draw, then clamps every
budget to a static per-modality maximum and drops the excess: the sample is padded instead of
filled. With small alphas one modality often takes almost all of E, its budget is clamped to
its size, and the example has a single input modality. mmjax's default (`sample_budgets`)
hands the excess to the other modalities, so budgets fill the total whenever they can.

Pure numpy: this runs in Grain data-loader workers.
"""

import numpy as np

from mmjax.fourm.masking.mixtures import budget_arrays, sample_dirichlet


def clamped_budgets(p, extra_winners, total: int, maxima) -> np.ndarray:
    """int64 [M]: the deterministic part of ml-4m's rule: floor(p * total), plus one token
    for each entry of `extra_winners` (modality indices: the argmax of each extra Dirichlet
    draw, one per token left), clamped to `maxima` [M]."""
    p = np.asarray(p, np.float64)
    budgets = np.floor(p * total).astype(np.int64)
    budgets += np.bincount(np.asarray(extra_winners, np.int64), minlength=len(p))
    return np.minimum(budgets, np.asarray(maxima, np.int64))


def sample_budgets_clamped(rng: np.random.Generator, alphas, total: int, maxima) -> np.ndarray:
    """int64 [M]: ml-4m's budgets for `total` tokens over modalities with Dirichlet(alphas)
    proportions and static maxima [M] (0 = unavailable). Only modalities with alpha > 0 and
    a maximum > 0 take part; the budgets sum to at most `total`."""
    alphas, maxima = budget_arrays(alphas, maxima, total, "maxima")
    budgets = np.zeros(alphas.shape, np.int64)
    on = np.flatnonzero((alphas > 0) & (maxima > 0))
    if len(on) == 0:
        return budgets
    p = sample_dirichlet(rng, alphas[on])
    left = total - int(np.floor(p * total).sum())
    winners = [int(np.argmax(sample_dirichlet(rng, alphas[on]))) for _ in range(left)]
    budgets[on] = clamped_budgets(p, winners, total, maxima[on])
    return budgets
