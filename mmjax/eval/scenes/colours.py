"""Colour presence: which named object colours appear in an rgb image of a scene."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mmjax.data.scenes.constants import (
    AMBIENT,
    COLOR_NAMES,
    COLOR_RGB,
    FLOOR_CHECKER,
    FLOOR_RGB,
    SKY_BOTTOM_RGB,
    SKY_TOP_RGB,
)
from mmjax.eval.checks import fail, finite

# colour_presence defaults, set on validation scenes (docs/experiments.md, "Any-to-any metrics
# on the scenes").
PRESENCE_MAX_DISTANCE = 0.08
PRESENCE_MIN_FRACTION = 0.0025
_COLOR_SET = frozenset(COLOR_NAMES)


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance of points p [N, 3] to the segment a -> b."""
    d = b - a
    s = np.clip((p - a) @ d / (d @ d), 0.0, 1.0)
    return np.linalg.norm(p - (a + s[:, None] * d), axis=-1)


def _references() -> list[tuple[np.ndarray, np.ndarray]]:
    """RGB segments a rendered surface can take: each object colour from full shadow
    (ambient only) to fully lit, then the floor (checker albedo, same lighting) and the sky
    gradient. Index k < len(COLOR_NAMES) is colour k."""
    refs = [(AMBIENT * c, 1.0 * c) for c in COLOR_RGB.astype(np.float64)]
    refs.append((AMBIENT * (1 - FLOOR_CHECKER) * FLOOR_RGB, (1 + FLOOR_CHECKER) * FLOOR_RGB))
    refs.append((SKY_TOP_RGB, SKY_BOTTOM_RGB))
    return [(np.asarray(a, np.float64), np.asarray(b, np.float64)) for a, b in refs]


def colour_presence(
    image,
    colours: Iterable,
    *,
    max_distance: float = PRESENCE_MAX_DISTANCE,
    min_fraction: float = PRESENCE_MIN_FRACTION,
) -> dict:
    """Fraction of the named object colours that appear in an rgb image.

    The scenes shade an object of colour c as ``c * (AMBIENT + DIFFUSE * max(n.l, 0))`` (plus a
    small white highlight), so its pixels lie on the segment from ``0.3 c`` (shadow) to ``c``.
    Each pixel is assigned to the nearest of these segments for the eight colours, the floor
    (its checker albedo under the same lighting) and the sky gradient. Colour c is present when
    at least ``min_fraction`` of the image's pixels (and at least one) are assigned to c within
    ``max_distance`` (RGB Euclidean, values in [0, 1]).

    Gray is unreliable on blurred or noisy images (shaded floor pixels lie close to the gray
    segment); ``present`` lets a caller drop it. Measurements: docs/experiments.md.

    Args:
      image: [H, W, 3] floats in [0, 1].
      colours: colour names (COLOR_NAMES) or ids; duplicates count once.

    Returns ``fraction`` (present / named; 1.0 when none are named), ``present`` (name -> bool)
    and ``pixel_fraction`` (name -> fraction of pixels assigned to it within max_distance).
    """
    fn = "colour_presence"
    img = finite(fn, "image", image)
    if img.ndim != 3 or img.shape[-1] != 3:
        fail(fn, "image", f"must be one rgb image [H, W, 3], got shape {img.shape}")
    if img.size and (img.min() < -1e-6 or img.max() > 1.0 + 1e-6):
        fail(fn, "image", f"values must lie in [0, 1], got [{img.min():.4g}, {img.max():.4g}]")
    if not (np.isfinite(max_distance) and max_distance > 0):
        fail(fn, "max_distance", f"must be > 0, got {max_distance!r}")
    if not (0.0 <= min_fraction <= 1.0):
        fail(fn, "min_fraction", f"must lie in [0, 1], got {min_fraction!r}")
    if isinstance(colours, str):
        colours = [colours]
    ids = []
    for c in colours:
        if isinstance(c, str) and c in _COLOR_SET:
            k = COLOR_NAMES.index(c)
        elif (
            isinstance(c, int | np.integer)
            and not isinstance(c, bool)
            and 0 <= c < len(COLOR_NAMES)
        ):
            k = int(c)
        else:
            fail(fn, "colours", f"must hold names in {COLOR_NAMES} or ids 0..7, got {c!r}")
        if k not in ids:
            ids.append(k)
    px = img.reshape(-1, 3)
    dist = np.stack([_segment_distance(px, a, b) for a, b in _references()], axis=1)
    nearest = dist.argmin(axis=1)
    need = max(1, int(np.ceil(min_fraction * len(px))))
    present, pixel_fraction = {}, {}
    for k in ids:
        count = int(np.sum((nearest == k) & (dist[:, k] <= max_distance)))
        name = COLOR_NAMES[k]
        present[name] = count >= need
        pixel_fraction[name] = count / len(px)
    fraction = sum(present.values()) / len(ids) if ids else 1.0
    return {"fraction": float(fraction), "present": present, "pixel_fraction": pixel_fraction}
