"""Input checks shared by the metrics: each raises ValueError naming the function, the argument
and what was expected, so a bad call says what to fix."""

from __future__ import annotations

import numpy as np


def fail(fn: str, arg: str, what: str) -> None:
    raise ValueError(f"{fn}: {arg} {what}")


def finite(fn: str, arg: str, x) -> np.ndarray:
    """``x`` as float64, which must be a finite numeric (or bool) array."""
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        fail(fn, arg, f"must be a numeric array, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        fail(fn, arg, "must be finite (found nan or inf)")
    return a


def same_shape(fn: str, pred: np.ndarray, true: np.ndarray) -> None:
    if pred.shape != true.shape:
        fail(fn, "pred", f"must have the shape of true {true.shape}, got {pred.shape}")


def valid_mask(fn: str, valid, shape: tuple, default: np.ndarray, default_desc: str) -> np.ndarray:
    """The scored pixels: ``default`` when ``valid`` is None, else ``valid`` (a bool array of
    ``shape`` that must lie inside ``default``). At least one pixel must be scored."""
    if valid is None:
        mask = default
    else:
        mask = np.asarray(valid)
        if mask.dtype != bool:
            fail(fn, "valid", f"must be a boolean mask, got dtype {mask.dtype}")
        if mask.shape != shape:
            fail(fn, "valid", f"must have shape {shape}, got {mask.shape}")
        if np.any(mask & ~default):
            fail(fn, "valid", f"selects pixels outside {default_desc} (they have no ground truth)")
    if not mask.any():
        fail(fn, "valid", f"selects no pixels ({default_desc} is empty)")
    return mask


def class_ids(fn: str, arg: str, x, num_classes: int) -> np.ndarray:
    """``x`` as int64, which must hold integer ids in [0, num_classes)."""
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.integer):
        fail(fn, arg, f"must hold integer class ids, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        fail(fn, arg, f"class ids must lie in [0, {num_classes}), got [{a.min()}, {a.max()}]")
    return a.astype(np.int64)


def ratio(num: int, den: int) -> float:
    """num / den, and 1.0 for an empty denominator (nothing to find, or nothing claimed)."""
    return 1.0 if den == 0 else num / den
