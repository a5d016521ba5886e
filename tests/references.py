"""Independent numpy references the tests compare against (float64, brute force)."""

import numpy as np


def np_normalize(x):
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def np_sqdist(x, codebook, metric="l2"):
    """[N, D], [K, D] -> [N, K] squared distances, float64, by explicit differences."""
    x = np.asarray(x, np.float64)
    c = np.asarray(codebook, np.float64)
    if metric == "cosine":
        x, c = np_normalize(x), np_normalize(c)
    return np.sum((x[:, None, :] - c[None, :, :]) ** 2, axis=-1)


def np_nearest(x, codebook, metric="l2"):
    """Brute-force argmin (first occurrence: ties to the smallest index) and min distance."""
    d = np_sqdist(x, codebook, metric)
    idx = np.argmin(d, axis=1)
    return idx, d[np.arange(len(idx)), idx], d


def assert_nearest(idx, x, codebook, metric="l2", rtol=1e-4):
    """Indices must be the brute-force argmin, except where the best two distances are
    closer than float32 rounding can separate; there, the chosen code must be as close."""
    ref_idx, ref_min, d = np_nearest(x, codebook, metric)
    idx = np.asarray(idx).reshape(-1)
    chosen = d[np.arange(len(idx)), idx]
    scale = np.maximum(1.0, np.max(np.abs(d), axis=1))
    np.testing.assert_array_less(chosen - ref_min, rtol * scale + 1e-12)
    second = np.partition(d, 1, axis=1)[:, 1] if d.shape[1] > 1 else np.full(len(idx), np.inf)
    clear = (second - ref_min) > rtol * scale
    np.testing.assert_array_equal(idx[clear], ref_idx[clear])


def np_usage(indices, codebook_size):
    _, counts = np.unique(np.asarray(indices).reshape(-1), return_counts=True)
    p = counts / counts.sum()
    return len(counts) / codebook_size, float(np.exp(-np.sum(p * np.log(p))))
