"""Trivial baselines on the scenes: per-pixel train means and majorities, a caption-blind mean
image and a chance caption. They return predictions in the forms the scenes metrics score, so a
caller scores a model and its baselines with the same metric calls."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from mmjax.data.scenes.constants import COLOR_NAMES, SHAPE_NAMES
from mmjax.eval.checks import class_ids, fail, finite
from mmjax.eval.scenes.captions import check_pairs, objects_caption
from mmjax.eval.scenes.dense import NUM_SEMSEG_CLASSES


def _stack(fn: str, arg: str, x, rank: int, layout: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != rank or a.shape[0] == 0:
        fail(fn, arg, f"must be a non-empty stack {layout}, got shape {a.shape}")
    return a


def mean_depth_baseline(train_depths) -> np.ndarray:
    """Per-pixel mean depth [H, W] float32 of a train stack [N, H, W] (the scenes' encoding),
    averaged over the samples that hit something at that pixel (depth > 0); a pixel no sample
    hits gets the mean of all hit pixels. Score it with ``depth_errors`` per test image."""
    fn = "mean_depth_baseline"
    d = finite(fn, "train_depths", _stack(fn, "train_depths", train_depths, 3, "[N, H, W]"))
    if d.min() < 0:
        fail(fn, "train_depths", f"must be depths >= 0 (0 = no hit), got minimum {d.min():.4g}")
    hit = d > 0
    if not hit.any():
        fail(fn, "train_depths", "has no pixel with depth > 0")
    count = hit.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, d.sum(0) / count, d[hit].mean())
    return mean.astype(np.float32)


def mean_normals_baseline(train_normals) -> np.ndarray:
    """Per-pixel mean normal direction [H, W, 3] float32 (unit vectors) of a train stack
    [N, H, W, 3], over the samples with a normal there (|n| > 0.5); a pixel with none, or whose
    mean cancels out, gets the normalized mean of all valid normals."""
    fn = "mean_normals_baseline"
    n = finite(fn, "train_normals", _stack(fn, "train_normals", train_normals, 4, "[N, H, W, 3]"))
    if n.shape[-1] != 3:
        fail(fn, "train_normals", f"must be [N, H, W, 3], got shape {n.shape}")
    valid = np.linalg.norm(n, axis=-1) > 0.5
    if not valid.any():
        fail(fn, "train_normals", "has no valid normal (|n| > 0.5)")
    total = np.where(valid[..., None], n, 0.0).sum(0)
    glob = n[valid].sum(0)
    glob = glob / max(np.linalg.norm(glob), 1e-12)
    norm = np.linalg.norm(total, axis=-1, keepdims=True)
    out = np.where(norm > 1e-6, total / np.maximum(norm, 1e-12), glob)
    return out.astype(np.float32)


def majority_class_baseline(
    train_semsegs, num_classes: int = NUM_SEMSEG_CLASSES, per_pixel: bool = True
) -> np.ndarray:
    """Class map [H, W] int32 from a train stack [N, H, W]: the most frequent class at each
    pixel (``per_pixel``, the default; sky on top and floor below, say) or the single most
    frequent class everywhere. Ties go to the lower class id."""
    fn = "majority_class_baseline"
    s = class_ids(
        fn,
        "train_semsegs",
        _stack(fn, "train_semsegs", train_semsegs, 3, "[N, H, W]"),
        num_classes,
    )
    if per_pixel:
        counts = np.stack([(s == c).sum(0) for c in range(num_classes)], axis=-1)  # [H, W, K]
        return np.argmax(counts, axis=-1).astype(np.int32)
    top = int(np.argmax(np.bincount(s.ravel(), minlength=num_classes)))
    return np.full(s.shape[1:], top, dtype=np.int32)


def mean_image_baseline(train_images) -> np.ndarray:
    """Mean rgb image [H, W, 3] float32 of a train stack [N, H, W, 3] in [0, 1] (a caption ->
    rgb baseline that ignores the caption)."""
    fn = "mean_image_baseline"
    x = finite(fn, "train_images", _stack(fn, "train_images", train_images, 4, "[N, H, W, 3]"))
    if x.shape[-1] != 3:
        fail(fn, "train_images", f"must be a stack [N, H, W, 3], got shape {x.shape}")
    if x.min() < 0 or x.max() > 1:
        fail(fn, "train_images", f"values must lie in [0, 1], got [{x.min():.4g}, {x.max():.4g}]")
    return x.mean(0).astype(np.float32)


def frequent_objects_caption_baseline(train_objects: Iterable, k: int | None = None) -> str:
    """Chance caption baseline: a caption (``objects_caption``) naming the ``k`` (colour, shape)
    pairs most frequent in the train scenes, whatever the input.

    ``train_objects`` is an iterable of per-scene object sets (``visible_objects(example)`` or
    ``caption_objects(caption)``). ``k`` defaults to the mean number of objects per scene,
    rounded. Ties go to the earlier pair in COLOR_NAMES x SHAPE_NAMES order.
    """
    fn = "frequent_objects_caption_baseline"
    counts: Counter = Counter()
    sizes = []
    for objs in train_objects:
        pairs = check_pairs(fn, "train_objects", objs)
        counts.update(pairs)
        sizes.append(len(pairs))
    if not sizes:
        fail(fn, "train_objects", "is empty")
    if k is None:
        k = round(float(np.mean(sizes)))
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        fail(fn, "k", f"must be an int >= 0, got {k!r}")
    order = [(c, s) for c in COLOR_NAMES for s in SHAPE_NAMES]
    ranked = sorted(order, key=lambda p: (-counts[p], order.index(p)))
    return objects_caption(ranked[: int(k)])
