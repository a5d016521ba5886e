"""Statistics of visual tokens (numpy, no I/O): unigram distribution, entropy and perplexity
overall and per grid position, codebook usage, the rank-frequency (Zipf) exponent and the
mutual information between neighbouring tokens. `python -m mmjax.eval.tokens` reports them.

Entropies are plug-in (maximum-likelihood) estimates in bits: the entropy of the empirical
distribution. They are biased low, and the plug-in mutual information biased high, by about
(K_a - 1)(K_b - 1) / (2 n ln 2) bits for n independent pairs over K_a x K_b observed symbols
(more for the correlated pairs of one image); so every mutual information comes with a null:
the same estimator on pairs whose two tokens come from different images.
"""

import numpy as np

ZIPF_ESTIMATOR = (
    "discrete power-law maximum likelihood on ranks 1..K_used: p(r) = r^-s / sum_k k^-s over "
    "the K_used codes with nonzero counts, ranked by frequency; s solves E_s[log r] = "
    "mean log r of the tokens' ranks"
)
MI_ESTIMATOR = (
    "plug-in: H(a) + H(b) - H(a, b) of the empirical distributions of neighbouring pairs "
    "pooled over grid positions and images; *_null_bits: the same with each pair's second "
    "token taken from the same position of another image (estimator bias + position effect)"
)


def check_tokens(tokens, codebook_size: int | None = None, name: str = "tokens") -> np.ndarray:
    """`tokens` as an int64 array, checked: integers, non-empty, in [0, codebook_size)."""
    a = np.asarray(tokens)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: tokens must be integers, got dtype {a.dtype}")
    if a.size == 0:
        raise ValueError(f"{name}: no tokens (shape {a.shape})")
    a = a.astype(np.int64)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or (codebook_size is not None and hi >= codebook_size):
        raise ValueError(
            f"{name}: token ids must lie in [0, {codebook_size}) (the codebook), got [{lo}, {hi}]"
        )
    return a


def unigram_counts(tokens, codebook_size: int) -> np.ndarray:
    """int64 [codebook_size]: how often each code occurs."""
    a = check_tokens(tokens, codebook_size)
    return np.bincount(a.reshape(-1), minlength=codebook_size)


def entropy_from_counts(counts) -> float:
    """Plug-in entropy (bits) of a histogram; zero counts contribute nothing."""
    c = np.asarray(counts, np.float64).reshape(-1)
    c = c[c > 0]
    if c.size == 0:
        raise ValueError("entropy_from_counts: the histogram is empty")
    p = c / c.sum()
    return float(max(-np.sum(p * np.log2(p)), 0.0))


def entropy_bits(tokens) -> float:
    """Plug-in entropy (bits) of the tokens' empirical distribution."""
    _, counts = np.unique(check_tokens(tokens).reshape(-1), return_counts=True)
    return entropy_from_counts(counts)


def position_entropy_bits(tokens) -> np.ndarray:
    """float64 [*grid]: for tokens [N, *grid], the plug-in entropy (bits) of the N tokens at
    each grid position."""
    a = check_tokens(tokens)
    if a.ndim < 2:
        raise ValueError(f"position_entropy_bits: tokens must be [N, *grid], got {a.shape}")
    flat = a.reshape(a.shape[0], -1)
    out = [entropy_from_counts(np.unique(flat[:, p], return_counts=True)[1]) for p in
           range(flat.shape[1])]  # fmt: skip
    return np.asarray(out, np.float64).reshape(a.shape[1:])


def codebook_usage(tokens, codebook_size: int) -> dict:
    """`distinct_codes` (codes that occur) and `codebook_usage` (their fraction of the
    codebook)."""
    used = int(np.unique(check_tokens(tokens, codebook_size)).size)
    return {"distinct_codes": used, "codebook_usage": used / codebook_size}


def rank_frequency(counts) -> np.ndarray:
    """float64 [K_used]: relative frequencies of the used codes, most frequent first (rank r
    is index r - 1)."""
    c = np.sort(np.asarray(counts, np.float64).reshape(-1))[::-1]
    c = c[c > 0]
    if c.size == 0:
        raise ValueError("rank_frequency: the histogram is empty")
    return c / c.sum()


def zipf_pmf(s: float, num_ranks: int) -> np.ndarray:
    """p(r) = r^-s / sum_{k<=K} k^-s for r = 1..K (the truncated Zipf law)."""
    logw = -s * np.log(np.arange(1, num_ranks + 1, dtype=np.float64))
    w = np.exp(logw - logw.max())
    return w / w.sum()


def zipf_exponent(counts, tol: float = 1e-10, max_exponent: float = 64.0) -> float | None:
    """The maximum-likelihood Zipf exponent s of a histogram (see ZIPF_ESTIMATOR).

    The used codes are ranked by count (rank 1: the most frequent) and each token is taken
    as a draw of its rank from the truncated Zipf law `zipf_pmf(s, K_used)`. The
    log-likelihood -s sum(log r) - n log sum_k k^-s is concave in s, and its derivative
    vanishes where the model's mean log-rank equals the tokens' mean log-rank; that mean
    decreases in s, so bisection finds it. s = 0 is the uniform law; s is capped at
    `max_exponent` (all tokens on rank 1 in practice). None when one code is used (no rank
    curve to fit)."""
    freqs = rank_frequency(counts)
    k = freqs.size
    if k == 1:
        return None
    logr = np.log(np.arange(1, k + 1, dtype=np.float64))
    target = float(np.sum(freqs * logr))

    def mean_log_rank(s):
        return float(np.sum(zipf_pmf(s, k) * logr))

    if target >= mean_log_rank(0.0):  # as flat as uniform (ties only)
        return 0.0
    if target <= mean_log_rank(max_exponent):
        return max_exponent
    lo, hi = 0.0, max_exponent
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if mean_log_rank(mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def zipf_ks_distance(counts, s: float | None) -> float | None:
    """Largest gap between the empirical and the fitted Zipf CDFs over ranks (0: a perfect
    fit, 1: none); a goodness-of-fit figure for the exponent."""
    if s is None:
        return None
    freqs = rank_frequency(counts)
    return float(np.max(np.abs(np.cumsum(freqs) - np.cumsum(zipf_pmf(s, freqs.size)))))


def pair_mutual_information(a, b) -> float:
    """Plug-in mutual information (bits) between paired symbols a[i] and b[i]:
    H(a) + H(b) - H(a, b) of their empirical (joint) distributions."""
    a = check_tokens(a, name="pairs").reshape(-1)
    b = check_tokens(b, name="pairs").reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"pair_mutual_information: {a.shape} and {b.shape} differ")
    base = int(b.max()) + 1
    joint = np.unique(a * base + b, return_counts=True)[1]
    ha = entropy_from_counts(np.unique(a, return_counts=True)[1])
    hb = entropy_from_counts(np.unique(b, return_counts=True)[1])
    return float(max(ha + hb - entropy_from_counts(joint), 0.0))


def neighbour_pairs(tokens, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, second), each [N, P]: the P pairs of tokens adjacent along grid `axis` of
    tokens [N, *grid] (axis 0: vertical, down; axis 1: horizontal, right) in each image."""
    a = check_tokens(tokens)
    ax = axis + 1
    if not 1 <= ax < a.ndim:
        raise ValueError(f"neighbour_pairs: tokens {a.shape} have no grid axis {axis}")
    n = a.shape[ax]
    first = np.take(a, np.arange(n - 1), axis=ax)
    second = np.take(a, np.arange(1, n), axis=ax)
    return first.reshape(a.shape[0], -1), second.reshape(a.shape[0], -1)


def other_image(num_images: int, seed: int = 0) -> np.ndarray:
    """A random permutation of 0..N-1 with no fixed point (image i -> another image)."""
    order = np.random.default_rng(seed).permutation(num_images)
    partner = np.empty_like(order)
    partner[order] = np.roll(order, -1)
    return partner


def neighbour_mutual_information(tokens, axis: int, seed: int = 0) -> dict | None:
    """Mutual information between tokens adjacent along grid `axis` (0: vertical, 1:
    horizontal), pooled over positions and images: `bits` (plug-in) and `pairs`, and
    `null_bits`: the same estimator when each pair's second token comes from the same
    position of another image. The null keeps both sides' marginals, positions and
    within-image structure, so it is what the estimator reports for neighbours that share
    nothing but their position: its bias on these tokens plus the information position
    alone carries. None for a grid side of 1; no null for one image."""
    first, second = neighbour_pairs(tokens, axis)
    if first.size == 0:
        return None
    n = first.shape[0]
    null = pair_mutual_information(first, second[other_image(n, seed)]) if n > 1 else None
    return {
        "bits": pair_mutual_information(first, second),
        "null_bits": null,
        "pairs": int(first.size),
    }


def token_statistics(tokens, codebook_size: int, seed: int = 0) -> dict:
    """Every statistic of image tokens [N, h, w] (or [N, L] for 1D tokenizers) from a
    codebook of `codebook_size` codes, as plain Python numbers and lists (JSON-ready);
    `unigram_counts` is an int64 array."""
    a = check_tokens(tokens, codebook_size)
    if a.ndim not in (2, 3):
        raise ValueError(
            f"token_statistics: tokens must be [N, h, w] (a grid) or [N, L] (a sequence), "
            f"got shape {a.shape}"
        )
    counts = np.bincount(a.reshape(-1), minlength=codebook_size)
    h = entropy_from_counts(counts)
    pos_h = position_entropy_bits(a)
    s = zipf_exponent(counts)
    out = {
        "num_images": int(a.shape[0]),
        "grid": list(a.shape[1:]),
        "num_tokens": int(a.size),
        "codebook_size": int(codebook_size),
        "distinct_codes": int(np.count_nonzero(counts)),
        "codebook_usage": float(np.count_nonzero(counts) / codebook_size),
        "entropy_bits": h,
        "max_entropy_bits": float(np.log2(codebook_size)),
        "perplexity": float(2.0**h),
        "mean_position_entropy_bits": float(pos_h.mean()),
        "mean_position_perplexity": float(np.mean(2.0**pos_h)),
        "position_entropy_bits": pos_h.round(6).tolist(),
        "position_perplexity": (2.0**pos_h).round(6).tolist(),
        "zipf_exponent": s,
        "zipf_ks_distance": zipf_ks_distance(counts, s),
        "unigram_counts": counts,
    }
    # On a sequence [N, L] the only neighbours are the next token ("horizontal").
    axes = {"vertical": 0, "horizontal": 1} if a.ndim == 3 else {"horizontal": 0}
    for name in ("horizontal", "vertical"):
        mi = neighbour_mutual_information(a, axes[name], seed) if name in axes else None
        out[f"mutual_information_{name}_bits"] = mi and mi["bits"]
        out[f"mutual_information_{name}_null_bits"] = mi and mi["null_bits"]
        out[f"mutual_information_{name}_pairs"] = mi["pairs"] if mi else 0
    return out
