"""Any-to-any metrics against the scenes' exact ground truth, and trivial baselines (numpy only).

Everything here takes plain arrays in the units of ``mmjax.data.scenes.generate`` (or of a
modality codec's ``postprocess``, which returns the same units) and returns plain floats:

- depth: camera z-depth in world units (about 6 .. 16 on hit pixels), exactly 0 where the ray
  hits nothing (sky). ``depth_errors`` scores the pixels with true depth > 0.
- normals: camera-space unit vectors (x right, y up, z toward the camera), exactly 0 on the sky.
  ``normals_angular_error`` scores the pixels with |true| > 0.5.
- semseg: int class ids indexing ``SEMSEG_CLASSES`` (background, floor, sphere, cube, cylinder).
- caption: templated English; ``caption_objects`` reads the (colour, shape) pairs it names.
- boxes: inclusive pixel boxes ``(x_min, y_min, x_max, y_max)`` int [M, 4] padded with rows of
  -1, with class ids (into ``SEMSEG_CLASSES``) and colour ids (into ``COLOR_NAMES``): the form of
  the scene's ``boxes`` / ``box_class`` / ``box_color`` and of ``tokens_to_scene_boxes``.
- rgb: [H, W, 3] floats in [0, 1]; ``colour_presence`` checks which named colours appear.

``visible_objects(example)`` gives the ground truth the caption and colour metrics need. The
``*_baseline`` functions return predictions in the same forms, so a caller scores a model and its
baselines with the same metric calls. Bad inputs (shape mismatches, values out of range, wrong
dtypes) raise ValueError naming the argument and what was expected.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

from mmjax.data.scenes.constants import (
    AMBIENT,
    COLOR_NAMES,
    COLOR_RGB,
    FLOOR_CHECKER,
    FLOOR_RGB,
    SEMSEG_CLASSES,
    SHAPE_NAMES,
    SIZE_NAMES,
    SKY_BOTTOM_RGB,
    SKY_TOP_RGB,
)

NUM_SEMSEG_CLASSES = len(SEMSEG_CLASSES)
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)  # degrees
# colour_presence defaults, tuned on validation scenes 0..299 at 64 px (see its docstring).
PRESENCE_MAX_DISTANCE = 0.08
PRESENCE_MIN_FRACTION = 0.0025


def _fail(fn: str, arg: str, what: str) -> None:
    raise ValueError(f"{fn}: {arg} {what}")


def _finite(fn: str, arg: str, x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        _fail(fn, arg, f"must be a numeric array, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        _fail(fn, arg, "must be finite (found nan or inf)")
    return a


def _same_shape(fn: str, pred: np.ndarray, true: np.ndarray) -> None:
    if pred.shape != true.shape:
        _fail(fn, "pred", f"must have the shape of true {true.shape}, got {pred.shape}")


def _mask(fn: str, valid, shape: tuple, default: np.ndarray, default_desc: str) -> np.ndarray:
    """The scored pixels: ``default`` when ``valid`` is None, else ``valid`` (a bool array of
    ``shape`` that must lie inside ``default``). At least one pixel must be scored."""
    if valid is None:
        mask = default
    else:
        mask = np.asarray(valid)
        if mask.dtype != bool:
            _fail(fn, "valid", f"must be a boolean mask, got dtype {mask.dtype}")
        if mask.shape != shape:
            _fail(fn, "valid", f"must have shape {shape}, got {mask.shape}")
        if np.any(mask & ~default):
            _fail(fn, "valid", f"selects pixels outside {default_desc} (they have no ground truth)")
    if not mask.any():
        _fail(fn, "valid", f"selects no pixels ({default_desc} is empty)")
    return mask


# ---------------------------------------------------------------------------------- depth
def depth_errors(pred, true, valid=None) -> dict[str, float]:
    """Depth errors over valid pixels.

    Args:
      pred, true: depth maps of equal shape ([H, W] or [B, H, W]), camera z-depth in world units,
        finite and >= 0. The scenes encode no hit (sky) as exactly 0, so ``true == 0`` marks
        pixels with no ground truth.
      valid: optional bool mask of the same shape; it must lie inside ``true > 0`` (the default).

    Returns ``abs_rel`` (mean |pred - true| / true), ``rmse``, ``mae`` (world units), ``delta1``
    (fraction with max(pred/true, true/pred) < 1.25; a predicted 0 never counts) and
    ``num_valid``. A predicted 0 on a valid pixel (the model says "sky") is an ordinary error of
    ``true``, abs_rel 1.
    """
    fn = "depth_errors"
    p = _finite(fn, "pred", pred)
    t = _finite(fn, "true", true)
    _same_shape(fn, p, t)
    if t.ndim < 2:
        _fail(fn, "true", f"must be a depth map [H, W] or a batch [B, H, W], got shape {t.shape}")
    for name, a in (("pred", p), ("true", t)):
        if a.size and a.min() < 0:
            _fail(fn, name, f"must be depths >= 0 (0 = no hit), got minimum {a.min():.4g}")
    mask = _mask(fn, valid, t.shape, t > 0, "true > 0")
    pv, tv = p[mask], t[mask]
    err = pv - tv
    pos = pv > 0
    within = np.zeros(len(pv), dtype=bool)
    within[pos] = np.maximum(pv[pos] / tv[pos], tv[pos] / pv[pos]) < 1.25
    return {
        "abs_rel": float(np.mean(np.abs(err) / tv)),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "delta1": float(np.mean(within)),
        "num_valid": int(mask.sum()),
    }


# ---------------------------------------------------------------------------------- normals
def normals_angular_error(pred, true, valid=None) -> dict[str, float]:
    """Angle between predicted and true surface normals, in degrees, over valid pixels.

    Args:
      pred, true: [..., 3] of equal shape, components in [-1, 1]. ``true`` is the scenes'
        encoding: camera-space unit vectors, exactly 0 on the sky (an image encoded as
        (n + 1) / 2 fails the unit-length check). ``pred`` is normalized here; a zero vector
        (the model says "sky") on a valid pixel counts as 90 degrees.
      valid: optional bool mask of shape ``true.shape[:-1]``; it must lie inside
        ``|true| > 0.5`` (the default).

    Returns ``mean``, ``median`` (degrees), ``within_11.25``, ``within_22.5``, ``within_30``
    (fraction of pixels with an angle <= the threshold) and ``num_valid``.
    """
    fn = "normals_angular_error"
    p = _finite(fn, "pred", pred)
    t = _finite(fn, "true", true)
    _same_shape(fn, p, t)
    if t.ndim < 2 or t.shape[-1] != 3:
        _fail(fn, "true", f"must be normals [..., 3], got shape {t.shape}")
    for name, a in (("pred", p), ("true", t)):
        if a.size and np.abs(a).max() > 1.0 + 1e-3:
            _fail(fn, name, f"components must lie in [-1, 1], got [{a.min():.4g}, {a.max():.4g}]")
    t_norm = np.linalg.norm(t, axis=-1)
    if np.any((np.abs(t_norm - 1.0) > 1e-2) & (t_norm > 1e-6)):
        _fail(fn, "true", "must hold unit vectors (or exactly 0 where nothing was hit)")
    mask = _mask(fn, valid, t.shape[:-1], t_norm > 0.5, "|true| > 0.5")
    pv, tv = p[mask], t[mask] / t_norm[mask][:, None]
    cross = np.linalg.norm(np.cross(pv, tv), axis=-1)
    dot = np.sum(pv * tv, axis=-1)
    # atan2 of the unnormalized pred is exact in angle and well conditioned near 0 and 180.
    angle = np.degrees(np.arctan2(cross, dot))
    angle = np.where(np.linalg.norm(pv, axis=-1) > 1e-6, angle, 90.0)
    out = {"mean": float(angle.mean()), "median": float(np.median(angle))}
    for th in ANGLE_THRESHOLDS:
        out[f"within_{th:g}"] = float(np.mean(angle <= th))
    out["num_valid"] = int(mask.sum())
    return out


# ---------------------------------------------------------------------------------- semseg
def _labels(fn: str, arg: str, x, num_classes: int) -> np.ndarray:
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.integer):
        _fail(fn, arg, f"must hold integer class ids, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        _fail(fn, arg, f"class ids must lie in [0, {num_classes}), got [{a.min()}, {a.max()}]")
    return a.astype(np.int64)


def semseg_miou(pred, true, num_classes: int = NUM_SEMSEG_CLASSES) -> dict:
    """Mean intersection-over-union and pixel accuracy of class maps of equal shape.

    The mean runs over the classes present in ``true`` or ``pred`` (union > 0); a class absent
    from both is left out (its ``per_class_iou`` entry is nan). ``num_classes`` defaults to
    ``len(SEMSEG_CLASSES)`` (5). Returns ``miou``, ``pixel_accuracy``, ``per_class_iou``
    (float64 [num_classes]) and ``num_classes_counted``.
    """
    fn = "semseg_miou"
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        _fail(fn, "num_classes", f"must be an int, got {num_classes!r}")
    if num_classes < 1:
        _fail(fn, "num_classes", f"must be >= 1, got {num_classes}")
    p = _labels(fn, "pred", pred, num_classes)
    t = _labels(fn, "true", true, num_classes)
    _same_shape(fn, p, t)
    if t.size == 0:
        _fail(fn, "true", "is empty")
    k = int(num_classes)
    cm = np.bincount((t * k + p).ravel(), minlength=k * k).reshape(k, k)  # [true, pred]
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
    counted = union > 0
    return {
        "miou": float(iou[counted].mean()),
        "pixel_accuracy": float(inter.sum() / t.size),
        "per_class_iou": iou,
        "num_classes_counted": int(counted.sum()),
    }


# ---------------------------------------------------------------------------------- captions
_COLOR_SET = frozenset(COLOR_NAMES)
_SIZE_SET = frozenset(SIZE_NAMES)


def _shape_word(word: str) -> str | None:
    if word in SHAPE_NAMES:
        return word
    if word.endswith("s") and word[:-1] in SHAPE_NAMES:
        return word[:-1]
    return None


def caption_objects(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a caption names, e.g. {("red", "cube"), ("blue", "sphere")}.

    The scenes' captions name every object as "<size> <colour> <shape>" (in the object list and
    again in the relation sentences), and colour-shape pairs are unique within a scene, so the
    set of pairs is the set of objects named. Parsing is case-insensitive and ignores
    punctuation and WordPiece spacing (``TextTokenizer.decode`` output works): a pair is a
    colour word followed by a shape word (plural accepted), optionally with one size word in
    between ("red small cube"). A shape with no colour before it names no pair.
    """
    if not isinstance(text, str):
        raise ValueError(f"caption_objects: text must be a str, got {type(text).__name__}")
    words = re.findall(r"[a-z]+", text.lower())
    pairs = set()
    for j, word in enumerate(words):
        shape = _shape_word(word)
        if shape is None:
            continue
        i = j - 1
        if i >= 0 and words[i] in _SIZE_SET:
            i -= 1
        if i >= 0 and words[i] in _COLOR_SET:
            pairs.add((words[i], shape))
    return pairs


def visible_objects(example: Mapping) -> set[tuple[str, str]]:
    """The (colour, shape) pairs of the objects visible in a ``scenes.generate`` example (at
    least one pixel): its box rows, read from ``box_color`` and ``box_class`` where
    ``box_instance > 0``. These are exactly the objects its caption names."""
    fn = "visible_objects"
    for key in ("box_color", "box_class", "box_instance"):
        if key not in example:
            _fail(fn, "example", f"lacks {key!r} (expected a scenes.generate example)")
    colors = np.asarray(example["box_color"]).reshape(-1)
    classes = np.asarray(example["box_class"]).reshape(-1)
    inst = np.asarray(example["box_instance"]).reshape(-1)
    if not (len(colors) == len(classes) == len(inst)):
        _fail(fn, "example", "has box_color, box_class, box_instance of different lengths")
    out = set()
    for c, k, i in zip(colors, classes, inst, strict=True):
        if i <= 0:
            continue
        if not (0 <= c < len(COLOR_NAMES)) or SEMSEG_CLASSES[int(k)] not in SHAPE_NAMES:
            _fail(fn, "example", f"has a visible box with colour id {c} and class id {k}")
        out.add((COLOR_NAMES[int(c)], SEMSEG_CLASSES[int(k)]))
    return out


def _pairs(fn: str, arg: str, objects) -> set[tuple[str, str]]:
    if isinstance(objects, str):
        _fail(fn, arg, "must be an iterable of (colour, shape) pairs, got a str")
    out = set()
    for item in objects:
        if (
            not isinstance(item, tuple | list)
            or len(item) != 2
            or item[0] not in _COLOR_SET
            or item[1] not in SHAPE_NAMES
        ):
            _fail(
                fn,
                arg,
                f"must hold (colour, shape) pairs with colour in {COLOR_NAMES} and shape in "
                f"{SHAPE_NAMES}, got {item!r}",
            )
        out.add((item[0], item[1]))
    return out


def _ratio(num: int, den: int) -> float:
    return 1.0 if den == 0 else num / den


def caption_recall_precision(pred_text: str, true_objects: Iterable) -> dict[str, float]:
    """How well a generated caption names a scene's objects.

    ``true_objects`` is the set of (colour, shape) pairs of the visible objects, e.g.
    ``visible_objects(example)`` (equivalently ``caption_objects(example["caption"])``).
    Returns ``pair_recall`` / ``pair_precision`` over (colour, shape) pairs, and
    ``shape_recall`` / ``shape_precision`` over the multisets of shapes of those pairs (a
    "red cube" for a true "blue cube" gets the shape right). An empty denominator gives 1.0
    (nothing to recall, or nothing claimed).
    """
    fn = "caption_recall_precision"
    if not isinstance(pred_text, str):
        _fail(fn, "pred_text", f"must be a str, got {type(pred_text).__name__}")
    pred = caption_objects(pred_text)
    true = _pairs(fn, "true_objects", true_objects)
    hit = len(pred & true)
    pred_shapes = Counter(s for _, s in pred)
    true_shapes = Counter(s for _, s in true)
    shape_hit = sum((pred_shapes & true_shapes).values())
    return {
        "pair_recall": _ratio(hit, len(true)),
        "pair_precision": _ratio(hit, len(pred)),
        "shape_recall": _ratio(shape_hit, len(true)),
        "shape_precision": _ratio(shape_hit, len(pred)),
    }


# ---------------------------------------------------------------------------------- boxes
def _boxes(fn: str, arg: str, boxes) -> tuple[np.ndarray, np.ndarray]:
    """(kept boxes float64 [N, 4], kept row mask [M]); rows of all -1 are padding."""
    b = _finite(fn, arg, boxes)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        _fail(fn, arg, f"must have shape [M, 4] (x_min, y_min, x_max, y_max), got {b.shape}")
    pad = np.all(b == -1, axis=1)
    keep = ~pad
    kb = b[keep]
    if np.any(kb < 0):
        _fail(fn, arg, "has negative coordinates outside padding rows (padding is a row of -1)")
    if np.any(kb[:, 0] > kb[:, 2]) or np.any(kb[:, 1] > kb[:, 3]):
        _fail(fn, arg, "has rows with x_min > x_max or y_min > y_max")
    return kb, keep


def _box_labels(fn: str, arg: str, labels, keep: np.ndarray) -> np.ndarray | None:
    if labels is None:
        return None
    a = np.asarray(labels)
    if a.ndim != 1 or len(a) != len(keep):
        _fail(fn, arg, f"must have one id per box row ({len(keep)}), got shape {np.shape(labels)}")
    if not np.issubdtype(a.dtype, np.integer):
        _fail(fn, arg, f"must hold integer ids, got dtype {a.dtype}")
    return a[keep]


def box_iou(a, b, inclusive: bool = True) -> np.ndarray:
    """IoU matrix [N, M] of boxes a [N, 4] and b [M, 4] (x_min, y_min, x_max, y_max). With
    ``inclusive`` the coordinates are pixel indices and a box covers x_max - x_min + 1 columns
    (the scenes' convention); otherwise they are continuous and it covers x_max - x_min."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    e = 1.0 if inclusive else 0.0
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(hi - lo + e, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0] + e) * (a[:, 3] - a[:, 1] + e)
    area_b = (b[:, 2] - b[:, 0] + e) * (b[:, 3] - b[:, 1] + e)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def box_iou_match(
    pred_boxes,
    true_boxes,
    pred_classes=None,
    true_classes=None,
    pred_colors=None,
    true_colors=None,
    *,
    inclusive: bool = True,
    iou_threshold: float = 0.5,
) -> dict:
    """Match predicted boxes to true boxes one-to-one and score the matches.

    Boxes are int or float [M, 4] ``(x_min, y_min, x_max, y_max)``; rows of all -1 are padding
    and dropped. This is the form of a scene's ``boxes`` and of ``tokens_to_scene_boxes``
    (inclusive pixel indices, ``inclusive=True``); pass ``inclusive=False`` for continuous
    boxes such as ``tokens_to_boxes`` bin centres. The optional ``*_classes`` / ``*_colors``
    are int [M] aligned with the rows (scene ``box_class`` / ``box_color``, or the class and
    colour ids ``tokens_to_scene_boxes`` returns); when a pair is given, a predicted box can
    only match a true box with the same id.

    Matching is greedy: repeatedly take the unmatched (true, pred) pair with the highest IoU
    (ties: lower true row, then lower pred row) while that IoU is > 0. Returns ``mean_iou``
    (the matched IoU averaged over true boxes, 0 for unmatched ones; with no true boxes it is
    1.0 when there are no predicted boxes either, else 0.0), ``recall`` and ``precision`` of
    matches with IoU >= ``iou_threshold`` (empty denominators give 1.0), ``matched_iou``
    (float64 [num_true]), ``num_true`` and ``num_pred``.
    """
    fn = "box_iou_match"
    if not 0.0 < iou_threshold <= 1.0:
        _fail(fn, "iou_threshold", f"must lie in (0, 1], got {iou_threshold!r}")
    p, pkeep = _boxes(fn, "pred_boxes", pred_boxes)
    t, tkeep = _boxes(fn, "true_boxes", true_boxes)
    allowed = np.ones((len(t), len(p)), dtype=bool)
    for kind, pl, tl in (
        ("classes", pred_classes, true_classes),
        ("colors", pred_colors, true_colors),
    ):
        if (pl is None) != (tl is None):
            _fail(fn, f"pred_{kind}/true_{kind}", "must both be given or both be None")
        pl = _box_labels(fn, f"pred_{kind}", pl, pkeep)
        tl = _box_labels(fn, f"true_{kind}", tl, tkeep)
        if pl is not None:
            allowed &= tl[:, None] == pl[None, :]
    iou = np.where(allowed, box_iou(t, p, inclusive), 0.0)  # [T, P]
    matched = np.zeros(len(t))
    if iou.size:
        flat = np.argsort(-iou, axis=None, kind="stable")  # row-major ties: true, then pred
        used_t = np.zeros(len(t), dtype=bool)
        used_p = np.zeros(len(p), dtype=bool)
        for f in flat:
            i, j = divmod(int(f), len(p))
            if iou[i, j] <= 0:
                break
            if not used_t[i] and not used_p[j]:
                used_t[i] = used_p[j] = True
                matched[i] = iou[i, j]
    empty = 1.0 if len(p) == 0 else 0.0  # no true boxes: right only if none predicted
    mean_iou = float(matched.mean()) if len(t) else empty
    good = int(np.sum(matched >= iou_threshold))
    return {
        "mean_iou": mean_iou,
        "recall": _ratio(good, len(t)),
        "precision": _ratio(good, len(p)),
        "matched_iou": matched,
        "num_true": len(t),
        "num_pred": len(p),
    }


# ---------------------------------------------------------------------------------- colours
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

    Measured with the defaults (distance 0.08, 0.25% of the pixels) on validation scenes
    0..299, as the mean over scenes of ``fraction``: exact renders give 0.993 for the colours
    of the visible objects (misses are objects of a few visible pixels) and 0.000 for the
    colours absent from the scene, at 32, 64 and 128 px alike. After a 3x3 box blur plus
    N(0, 0.02) noise (a stand-in for a tokenizer round trip) at 64 px: 0.963 present, 0.162
    absent; the false positives are "gray" (0.97 of scenes without a gray object: shaded floor
    pixels lie within about 0.03 of the gray segment) and "brown" (0.27: red or yellow blurred
    into the floor), the other six colours stay at 0.00, and leaving gray out gives 0.049
    absent. Gray is therefore unreliable on imperfect images; ``present`` lets a caller drop it.

    Args:
      image: [H, W, 3] floats in [0, 1].
      colours: colour names (COLOR_NAMES) or ids; duplicates count once.

    Returns ``fraction`` (present / named; 1.0 when none are named), ``present`` (name -> bool)
    and ``pixel_fraction`` (name -> fraction of pixels assigned to it within max_distance).
    """
    fn = "colour_presence"
    img = _finite(fn, "image", image)
    if img.ndim != 3 or img.shape[-1] != 3:
        _fail(fn, "image", f"must be one rgb image [H, W, 3], got shape {img.shape}")
    if img.size and (img.min() < -1e-6 or img.max() > 1.0 + 1e-6):
        _fail(fn, "image", f"values must lie in [0, 1], got [{img.min():.4g}, {img.max():.4g}]")
    if not (np.isfinite(max_distance) and max_distance > 0):
        _fail(fn, "max_distance", f"must be > 0, got {max_distance!r}")
    if not (0.0 <= min_fraction <= 1.0):
        _fail(fn, "min_fraction", f"must lie in [0, 1], got {min_fraction!r}")
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
            _fail(fn, "colours", f"must hold names in {COLOR_NAMES} or ids 0..7, got {c!r}")
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


# ---------------------------------------------------------------------------------- baselines
def _stack(fn: str, arg: str, x, rank: int, layout: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != rank or a.shape[0] == 0:
        _fail(fn, arg, f"must be a non-empty stack {layout}, got shape {a.shape}")
    return a


def mean_depth_baseline(train_depths) -> np.ndarray:
    """Per-pixel mean depth [H, W] float32 of a train stack [N, H, W] (the scenes' encoding),
    averaged over the samples that hit something at that pixel (depth > 0); a pixel no sample
    hits gets the mean of all hit pixels. Score it with ``depth_errors`` per test image."""
    fn = "mean_depth_baseline"
    d = _finite(fn, "train_depths", _stack(fn, "train_depths", train_depths, 3, "[N, H, W]"))
    if d.min() < 0:
        _fail(fn, "train_depths", f"must be depths >= 0 (0 = no hit), got minimum {d.min():.4g}")
    hit = d > 0
    if not hit.any():
        _fail(fn, "train_depths", "has no pixel with depth > 0")
    count = hit.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, d.sum(0) / count, d[hit].mean())
    return mean.astype(np.float32)


def mean_normals_baseline(train_normals) -> np.ndarray:
    """Per-pixel mean normal direction [H, W, 3] float32 (unit vectors) of a train stack
    [N, H, W, 3], over the samples with a normal there (|n| > 0.5); a pixel with none, or whose
    mean cancels out, gets the normalized mean of all valid normals."""
    fn = "mean_normals_baseline"
    n = _finite(fn, "train_normals", _stack(fn, "train_normals", train_normals, 4, "[N, H, W, 3]"))
    if n.shape[-1] != 3:
        _fail(fn, "train_normals", f"must be [N, H, W, 3], got shape {n.shape}")
    valid = np.linalg.norm(n, axis=-1) > 0.5
    if not valid.any():
        _fail(fn, "train_normals", "has no valid normal (|n| > 0.5)")
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
    s = _labels(
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
    x = _finite(fn, "train_images", _stack(fn, "train_images", train_images, 4, "[N, H, W, 3]"))
    if x.shape[-1] != 3:
        _fail(fn, "train_images", f"must be a stack [N, H, W, 3], got shape {x.shape}")
    if x.min() < 0 or x.max() > 1:
        _fail(fn, "train_images", f"values must lie in [0, 1], got [{x.min():.4g}, {x.max():.4g}]")
    return x.mean(0).astype(np.float32)


def objects_caption(objects: Iterable) -> str:
    """A caption naming (colour, shape) pairs ("A scene with a red cube and a blue sphere."),
    in the order given; ``caption_objects`` parses it back."""
    items = []
    for item in objects:
        pair = _pairs("objects_caption", "objects", [item])
        items.append("a {} {}".format(*pair.pop()))
    if not items:
        return "An empty floor with no objects."
    text = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"A scene with {text}."


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
        pairs = _pairs(fn, "train_objects", objs)
        counts.update(pairs)
        sizes.append(len(pairs))
    if not sizes:
        _fail(fn, "train_objects", "is empty")
    if k is None:
        k = round(float(np.mean(sizes)))
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        _fail(fn, "k", f"must be an int >= 0, got {k!r}")
    order = [(c, s) for c in COLOR_NAMES for s in SHAPE_NAMES]
    ranked = sorted(order, key=lambda p: (-counts[p], order.index(p)))
    return objects_caption(ranked[: int(k)])
