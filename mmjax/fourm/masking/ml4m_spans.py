"""ml-4m's span masking of one token sequence (`FourMMasking(span_rule="ml4m")`).

The record gets its eos appended and every token is then dropped independently: kept with
probability `keep` (uniform in [0, 1]), which shrinks by a factor 0.9, with fresh draws,
until the input fits its budget. Each run of dropped tokens becomes one sentinel; the target
lists each run after its sentinel and ends with the next sentinel (no eos):
    seq    a b c d e [EOS]        (c d and [EOS] dropped)
    input  a b S_0 e S_1
    target S_0 c d S_1 [EOS] S_2
The i-th sentinel is sentinel_ids[i] (ml-4m's are [S_1], [S_2], ...). mmjax's default
(`spans.span_mask`) masks T5 spans of a set length and ends the target with the eos.
A target longer than its budget is cut as ml-4m cuts it: from a random sentinel (not the
last) take `budget` tokens, or, where fewer than that follow it, the suffix from the
earliest sentinel that fits.

Random draws, in order: keep = rng.random(), then rng.random(n + 1) per try (a token is
kept where its draw is <= keep), then rng.integers(max(1, sentinels - 1)) for the cut. An
input budget of 0 drops everything without a draw (the input is empty).
Pure numpy: this runs in Grain data-loader workers.
"""

import numpy as np

from mmjax.fourm.masking.spans import _check_seq

KEEP_DECAY = 0.9  # ml-4m's keep_prob_decay_factor


def independent_span_mask(seq, dropped, sentinel_ids) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) int64 for `seq` [n] and bool `dropped` [n] (module docstring): each
    run of dropped tokens -> its sentinel; the target ends with the next sentinel."""
    seq, sentinels = _check_seq(seq, sentinel_ids)
    dropped = np.asarray(dropped, bool)
    starts = dropped & ~np.concatenate([[False], dropped[:-1]])
    runs = int(starts.sum())
    if runs + 1 > len(sentinels):
        raise ValueError(
            f"span masking made {runs} spans, which need {runs + 1} sentinel ids (one more "
            f"ends the target); only {len(sentinels)} are given"
        )
    run_id = np.cumsum(starts) - 1
    inp = np.where(dropped, sentinels[np.maximum(run_id, 0)], seq)[~dropped | starts]
    tgt = np.insert(seq[dropped], np.flatnonzero(starts[dropped]), sentinels[:runs])
    return inp, np.append(tgt, sentinels[runs]).astype(np.int64)


def cut_target(tgt, budget: int, sentinel_ids, chosen: int) -> np.ndarray:
    """ml-4m's cut of a target longer than `budget` tokens, from its `chosen`-th sentinel
    (module docstring); a target that fits is returned whole."""
    tgt = np.asarray(tgt)
    if len(tgt) <= budget:
        return tgt
    at = np.flatnonzero(np.isin(tgt, np.asarray(sentinel_ids)))
    start = at[chosen]
    if len(tgt) - start >= budget:
        return tgt[start : start + budget]
    first = next(i for i in at if len(tgt) - i <= budget)
    return tgt[first:]


def ml4m_span_mask(
    seq,
    rng: np.random.Generator,
    *,
    input_budget: int,
    target_budget: int,
    sentinel_ids,
    eos_id: int,
    max_positions: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Span-mask `seq` (int [n], no padding, no eos) by ml-4m's rule into (input, target)
    int64 with len(input) <= input_budget and len(target) - 1 <= target_budget decoder
    positions (and <= max_positions, the modality's position table, where given)."""
    seq, sentinels = _check_seq(seq, sentinel_ids)
    if input_budget < 0 or target_budget < 0:
        raise ValueError(f"budgets must be >= 0, got {input_budget}, {target_budget}")
    full = np.append(seq, eos_id)
    if input_budget == 0:
        inp, tgt = independent_span_mask(full, np.ones(len(full), bool), sentinels)
        inp = inp[:0]
    else:
        keep = rng.random()
        inp, tgt = independent_span_mask(full, rng.random(len(full)) > keep, sentinels)
        while len(inp) > input_budget:
            keep *= KEEP_DECAY
            inp, tgt = independent_span_mask(full, rng.random(len(full)) > keep, sentinels)
    slots = target_budget if max_positions is None else min(target_budget, max_positions)
    budget = slots + 1  # tokens: the decoder reads target[:-1] and predicts target[1:]
    if len(tgt) > budget:
        count = int(np.isin(tgt, sentinels).sum())
        tgt = cut_target(tgt, budget, sentinels, int(rng.integers(max(1, count - 1))))
    return inp, tgt
