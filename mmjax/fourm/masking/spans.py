"""T5-style span masking of one token sequence, within 4M input and target token budgets.

Masked spans are replaced in the input by one sentinel each (S_0, S_1, ... in order); the
target lists every span as its sentinel followed by the span's tokens, then eos:
    seq    a b c d e f          (c d and f masked)
    input  a b S_0 e S_1
    target S_0 c d S_1 f eos
The decoder reads target[:-1] and predicts target[1:] (teacher forcing).

Pure numpy: this runs in Grain data-loader workers.
"""

import numpy as np


def _check_seq(seq, sentinel_ids) -> tuple[np.ndarray, np.ndarray]:
    seq = np.asarray(seq)
    if seq.ndim != 1 or (seq.size and not np.issubdtype(seq.dtype, np.integer)):
        raise ValueError(f"a sequence must be a 1-D integer array, got {seq.dtype} {seq.shape}")
    sentinels = np.asarray(sentinel_ids, np.int64).reshape(-1)
    if sentinels.size == 0:
        raise ValueError("span masking needs at least one sentinel id")
    if np.isin(seq, sentinels).any():
        raise ValueError("the sequence contains sentinel ids; sentinels must not occur in data")
    return seq.astype(np.int64), sentinels


def _num_spans(k: int, n: int, mean_span_length: float, max_spans: int) -> int:
    """T5's span count for k masked tokens of n: about k / mean, at least 1 when k > 0, and no
    more than the kept tokens can separate (n - k + 1) or the sentinels can name."""
    if k == 0:
        return 0
    return int(min(max(1, round(k / mean_span_length)), k, n - k + 1, max_spans))


def _composition(rng, total: int, parts: int) -> np.ndarray:
    """A uniformly random split of `total` into `parts` non-negative integers."""
    bars = np.sort(rng.choice(total + parts - 1, parts - 1, replace=False))
    return np.diff(np.concatenate([[-1], bars, [total + parts - 1]])) - 1


def random_span_mask(rng, n: int, num_masked: int, num_spans: int) -> np.ndarray:
    """bool [n]: `num_masked` True tokens in exactly `num_spans` runs at random places."""
    if num_spans == 0:
        return np.zeros(n, bool)
    span_len = _composition(rng, num_masked - num_spans, num_spans) + 1
    gaps = _composition(rng, n - num_masked - (num_spans - 1), num_spans + 1)
    gaps[1:-1] += 1  # spans are separated by at least one kept token
    lengths = np.empty(2 * num_spans + 1, np.int64)
    lengths[0::2], lengths[1::2] = gaps, span_len
    return np.repeat(np.arange(len(lengths)) % 2 == 1, lengths)


def apply_span_mask(seq, mask, sentinel_ids, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input, full target) int64 for a given bool mask over `seq`."""
    seq, sentinels = _check_seq(seq, sentinel_ids)
    mask = np.asarray(mask, bool)
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    num_spans = int(starts.sum())
    if num_spans > len(sentinels):
        raise ValueError(f"{num_spans} masked spans but only {len(sentinels)} sentinel ids")
    span_id = np.cumsum(starts) - 1
    inp = np.where(mask, sentinels[np.maximum(span_id, 0)], seq)[~mask | starts]
    start_in_masked = np.flatnonzero(starts[mask])
    tgt = np.insert(seq[mask], start_in_masked, sentinels[:num_spans])
    return inp, np.concatenate([tgt, [eos_id]]).astype(np.int64)


def crop_target(tgt, budget: int) -> np.ndarray:
    """The first `budget` decoder positions of a target (its first budget + 1 tokens).

    A cropped target may end inside a span: its prefix is still a teacher-forced target
    (every kept token is predicted from the ones before it), and the tokens cut off are simply
    not targets this time. Cropping at span boundaries instead would leave a fully masked
    sequence longer than the budget (one span: S_0 + the whole sequence) with no target at
    all, so a model would only ever learn to write short sequences from nothing (in the demo:
    one-object captions, since the 60-token captions of busier scenes never fit a 64-token
    target budget shared with six other modalities). Uncropped targets end with eos.
    """
    tgt = np.asarray(tgt)
    return tgt if len(tgt) - 1 <= budget else tgt[: budget + 1]


def span_mask(
    seq,
    rng: np.random.Generator,
    *,
    input_budget: int,
    target_budget: int,
    sentinel_ids,
    eos_id: int,
    keep_prob: float | None = None,
    mean_span_length: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Span-mask `seq` (int [n], no padding, no eos) into (input, target) int64 arrays with
    len(input) <= input_budget and len(target) - 1 <= target_budget.

    The keep probability is uniform in [0, 1] unless given; with a target budget at least one
    token is masked (else there is nothing to predict), without one nothing is masked beyond
    what the input budget forces. If the input is too long, more tokens are masked until it
    fits; an input budget of 0 masks the whole sequence as one span. A target that is too
    long is cropped to its first `target_budget` decoder positions (`crop_target`).
    """
    seq, sentinels = _check_seq(seq, sentinel_ids)
    if input_budget < 0 or target_budget < 0:
        raise ValueError(f"budgets must be >= 0, got {input_budget}, {target_budget}")
    if mean_span_length < 1:
        raise ValueError(f"mean_span_length must be >= 1, got {mean_span_length}")
    n = len(seq)
    if n == 0:
        return seq, np.zeros(0, np.int64)
    if target_budget == 0:
        k = 0
    else:
        keep = rng.random() if keep_prob is None else keep_prob
        k = int(np.clip(round(n * (1.0 - keep)), 1, n))
    if input_budget == 0:
        k, m = n, 1
    else:
        m = _num_spans(k, n, mean_span_length, len(sentinels))
        while n - k + m > input_budget:  # mask one more token at a time: the least that fits
            k += 1
            m = _num_spans(k, n, mean_span_length, len(sentinels))
    inp, tgt = apply_span_mask(seq, random_span_mask(rng, n, k, m), sentinels, eos_id)
    if input_budget == 0:
        inp = inp[:0]  # the lone S_0 is implied: the model reads nothing of this modality
    return inp, crop_target(tgt, target_budget)


def unmask(inp, tgt, sentinel_ids) -> np.ndarray:
    """The original sequence from an input and its full (uncropped, eos-ended) target.

    An empty input with a non-empty target means the whole sequence was one masked span.
    """
    sentinel_ids = np.asarray(sentinel_ids).reshape(-1)
    if len(inp) == 0 and len(tgt) > 0:
        inp = sentinel_ids[:1]
    sentinel_set = {int(s) for s in np.asarray(sentinel_ids).reshape(-1)}
    spans: dict[int, list[int]] = {}
    current = None
    for t in np.asarray(tgt)[:-1].tolist():
        if t in sentinel_set:
            current = spans.setdefault(t, [])
        elif current is None:
            raise ValueError("a target must start with a sentinel")
        else:
            current.append(t)
    out: list[int] = []
    for t in np.asarray(inp).tolist():
        if t in sentinel_set:
            if t not in spans:
                raise ValueError(f"sentinel {t} of the input has no span in the target")
            out.extend(spans[t])
        else:
            out.append(t)
    return np.asarray(out, np.int64)
