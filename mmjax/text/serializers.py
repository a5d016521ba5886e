"""Boxes and scalar metadata <-> special-token sequences (4M-style sequence modalities).

Quantizer (shared by coordinates and metadata values): ``n`` uniform bins over ``[lo, hi]``;
value ``x`` goes to bin ``min(floor((x - lo) / (hi - lo) * n), n - 1)`` (so bin ``b`` covers
``[lo + b*w, lo + (b+1)*w)`` with ``w = (hi - lo) / n``, and ``hi`` falls in the last bin) and
bin ``b`` decodes to its centre ``lo + (b + 0.5) * w``. Decoding is therefore within ``w / 2``
of the original, and exact for values on bin centres.

Boxes: ``(x_min, y_min, x_max, y_max)`` in pixel coordinates of an image of side ``image_size``,
each coordinate quantized over ``[0, image_size]`` with the tokenizer's ``num_coord_bins``. A box
becomes six tokens ``xmin=a ymin=b xmax=c ymax=d [CLASS_<class>] [COLOR_<colour>]``. Coordinates
outside ``[0, image_size]`` or with ``min > max`` are rejected. The integer ("scene") helpers take
inclusive pixel indices in ``[0, image_size - 1]``, quantize them as points on the same axis and
decode to the integer nearest the bin centre (ties to the lower one): less than one bin width
off, inside the bin (re-serializing gives the same tokens), exact when
``image_size <= num_coord_bins``.

Metadata: each field becomes ``[META_<field>] v=<bin>`` with uniform bins over the field's
``ranges[field]``; values outside the range are clipped to it (they land in the first or last
bin).

Decoders stop at the first EOS or PAD token and raise ValueError naming the position and the
token kind expected there when a sequence is malformed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmjax.text.tokenizer import COORD_AXES, TextTokenizer

__all__ = [
    "TOKENS_PER_BOX",
    "boxes_to_tokens",
    "dequantize",
    "metadata_to_tokens",
    "quantize",
    "scene_boxes_to_tokens",
    "tokens_to_boxes",
    "tokens_to_metadata",
    "tokens_to_scene_boxes",
]

TOKENS_PER_BOX = 6
_BOX_SLOTS = (*(f"'{a}=' coordinate" for a in COORD_AXES), "class", "colour")


def quantize(values: Any, lo: float, hi: float, num_bins: int) -> np.ndarray:
    """Bin index (int64) of each value in ``n`` uniform bins over ``[lo, hi]``; clips outside."""
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"range ({lo}, {hi}) must be finite with hi > lo")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int | np.integer) or num_bins < 1:
        raise ValueError(f"num_bins must be an int >= 1, got {num_bins!r}")
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"cannot quantize non-finite values {v[~np.isfinite(v)].tolist()}")
    b = np.floor((v - lo) / (hi - lo) * num_bins)
    return np.clip(b, 0, num_bins - 1).astype(np.int64)


def dequantize(bins: Any, lo: float, hi: float, num_bins: int) -> np.ndarray:
    """Centre (float64) of each bin."""
    b = np.asarray(bins, dtype=np.float64)
    return float(lo) + (b + 0.5) * ((float(hi) - float(lo)) / num_bins)


def _check_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
        raise TypeError(f"image_size must be an int, got {image_size!r}")
    if image_size < 1:
        raise ValueError(f"image_size={image_size} must be >= 1")
    return int(image_size)


def _as_ids(ids: Any) -> list[int]:
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"expected a 1-D sequence of int token ids, got shape {arr.shape}")
    return [int(i) for i in arr]


def _cut(tok: TextTokenizer, ids: Any) -> list[int]:
    """ids up to (excluding) the first EOS or PAD."""
    ids = _as_ids(ids)
    stop = {tok.eos_id, tok.pad_id}
    for pos, i in enumerate(ids):
        if i in stop:
            return ids[:pos]
    return ids


# ---------------------------------------------------------------------------------- boxes
def boxes_to_tokens(
    tok: TextTokenizer,
    boxes: Any,
    classes: Sequence[str],
    colors: Sequence[str],
    *,
    image_size: int,
) -> list[int]:
    """Serialize N boxes ([N, 4] float or int, pixel coords) with class and colour words."""
    cfg = tok.require_config()
    size = _check_image_size(image_size)
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {np.shape(boxes)}")
    classes, colors = list(classes), list(colors)
    if len(classes) != len(b) or len(colors) != len(b):
        raise ValueError(f"got {len(b)} boxes but {len(classes)} classes and {len(colors)} colours")
    if not np.all(np.isfinite(b)):
        raise ValueError("boxes contain non-finite coordinates")
    for i, row in enumerate(b):
        if row.min() < 0 or row.max() > size:
            raise ValueError(f"box {i} {row.tolist()} lies outside [0, image_size={size}]")
        if row[0] > row[2] or row[1] > row[3]:
            raise ValueError(f"box {i} {row.tolist()} has x_min > x_max or y_min > y_max")
    bins = quantize(b, 0.0, size, cfg.num_coord_bins)
    out: list[int] = []
    for row, cls, col in zip(bins, classes, colors, strict=True):
        out += [tok.coord_token_id(axis, int(v)) for axis, v in zip(COORD_AXES, row, strict=True)]
        out += [tok.class_token_id(cls), tok.color_token_id(col)]
    return out


def _parse_boxes(
    tok: TextTokenizer, ids: Any, caller: str
) -> tuple[np.ndarray, list[str], list[str]]:
    """(coordinate bins int64 [N, 4], classes, colours) of a box token sequence."""
    seq = _cut(tok, ids)
    bins: list[list[int]] = []
    classes: list[str] = []
    colors: list[str] = []
    for start in range(0, len(seq), TOKENS_PER_BOX):
        row: list[int] = []
        for slot in range(TOKENS_PER_BOX):
            pos = start + slot
            expected = _BOX_SLOTS[slot]
            if pos >= len(seq):
                raise ValueError(
                    f"{caller}: position {pos}: expected a {expected} token, but the "
                    f"sequence ends (box {start // TOKENS_PER_BOX} has only {slot} of "
                    f"{TOKENS_PER_BOX} tokens)"
                )
            i = seq[pos]
            if slot < 4:
                parsed = tok.coord_from_id(i)
                ok = parsed is not None and parsed[0] == COORD_AXES[slot]
                if ok:
                    row.append(parsed[1])
            elif slot == 4:
                word = tok.class_from_id(i)
                ok = word is not None
                if ok:
                    classes.append(word)
            else:
                word = tok.color_from_id(i)
                ok = word is not None
                if ok:
                    colors.append(word)
            if not ok:
                raise ValueError(
                    f"{caller}: position {pos}: expected a {expected} token, "
                    f"got {tok.describe_id(i)}"
                )
        bins.append(row)
    return np.asarray(bins, dtype=np.int64).reshape(-1, 4), classes, colors


def tokens_to_boxes(
    tok: TextTokenizer, ids: Any, *, image_size: int
) -> tuple[np.ndarray, list[str], list[str]]:
    """Inverse of :func:`boxes_to_tokens`: (boxes float64 [N, 4] at bin centres, classes,
    colours). Stops at the first EOS/PAD; raises ValueError on malformed sequences."""
    cfg = tok.require_config()
    size = _check_image_size(image_size)
    bins, classes, colors = _parse_boxes(tok, ids, "tokens_to_boxes")
    return dequantize(bins, 0.0, size, cfg.num_coord_bins), classes, colors


def _bins_to_pixels(bins: np.ndarray, image_size: int, num_bins: int) -> np.ndarray:
    """Integer nearest each bin centre, ties to the lower one, clipped to [0, image_size - 1].

    Exact integer arithmetic: centre - 1/2 = ((2b + 1) * S - n) / (2n), and the result is
    ceil(centre - 1/2).
    """
    num = (2 * bins + 1) * image_size - num_bins
    pix = -((-num) // (2 * num_bins))
    return np.clip(pix, 0, image_size - 1).astype(np.int32)


def _lookup(kind: str, ids: np.ndarray, words: Sequence[str]) -> list[str]:
    out = []
    for i in ids:
        if not 0 <= i < len(words):
            raise ValueError(f"{kind} id {int(i)} outside [0, {len(words)}) of the word list")
        out.append(words[int(i)])
    return out


def scene_boxes_to_tokens(
    tok: TextTokenizer,
    boxes: Any,
    box_classes: Any,
    box_colors: Any,
    *,
    class_words: Sequence[str],
    color_words: Sequence[str],
    image_size: int,
) -> list[int]:
    """Serialize the padded array form of a scene: ``boxes`` int [M, 4] inclusive pixel indices
    in ``[0, image_size - 1]`` where rows of -1 are padding (skipped, wherever they are),
    ``box_classes`` / ``box_colors`` int [M] indexing ``class_words`` / ``color_words`` (ignored
    on padding rows)."""
    b = np.asarray(boxes)
    cls = np.asarray(box_classes).reshape(-1)
    col = np.asarray(box_colors).reshape(-1)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape [M, 4], got {b.shape}")
    if len(cls) != len(b) or len(col) != len(b):
        raise ValueError(
            f"got {len(b)} box rows but {len(cls)} class ids and {len(col)} colour ids"
        )
    pad = np.all(b == -1, axis=1)
    partial = np.any(b == -1, axis=1) & ~pad
    if np.any(partial):
        raise ValueError(f"box rows {np.flatnonzero(partial).tolist()} are only partly -1")
    keep = ~pad
    size = _check_image_size(image_size)
    if np.any(b[keep] < 0) or np.any(b[keep] > size - 1):
        bad = np.flatnonzero(keep & np.any((b < 0) | (b > size - 1), axis=1)).tolist()
        raise ValueError(
            f"box rows {bad} have pixel indices outside [0, image_size - 1 = {size - 1}]"
        )
    return boxes_to_tokens(
        tok,
        b[keep],
        _lookup("class", cls[keep], class_words),
        _lookup("colour", col[keep], color_words),
        image_size=image_size,
    )


def tokens_to_scene_boxes(
    tok: TextTokenizer,
    ids: Any,
    *,
    class_words: Sequence[str],
    color_words: Sequence[str],
    image_size: int,
    max_boxes: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`scene_boxes_to_tokens`: (boxes int32 [M, 4], class ids int32 [M],
    colour ids int32 [M]), padded with -1 to ``max_boxes`` rows (M = number of decoded boxes when
    ``max_boxes`` is None; more decoded boxes than ``max_boxes`` is a ValueError). Each coordinate
    is the integer nearest its bin centre (ties to the lower one), clipped to
    ``[0, image_size - 1]``: it lies inside the bin whenever bins are at least one pixel wide (so
    re-serializing gives the same tokens), is less than one bin width from any pixel in the bin,
    and is exact when ``image_size <= num_coord_bins``."""
    cfg = tok.require_config()
    size = _check_image_size(image_size)
    bins, classes, colors = _parse_boxes(tok, ids, "tokens_to_scene_boxes")
    n = len(bins)
    m = n if max_boxes is None else int(max_boxes)
    if n > m:
        raise ValueError(f"decoded {n} boxes, more than max_boxes={m}")
    class_index = {w: k for k, w in enumerate(class_words)}
    color_index = {w: k for k, w in enumerate(color_words)}
    out_boxes = np.full((m, 4), -1, dtype=np.int32)
    out_cls = np.full((m,), -1, dtype=np.int32)
    out_col = np.full((m,), -1, dtype=np.int32)
    out_boxes[:n] = _bins_to_pixels(bins, size, cfg.num_coord_bins)
    for k, (c, o) in enumerate(zip(classes, colors, strict=True)):
        if c not in class_index:
            raise ValueError(f"decoded class {c!r} is not in class_words")
        if o not in color_index:
            raise ValueError(f"decoded colour {o!r} is not in color_words")
        out_cls[k], out_col[k] = class_index[c], color_index[o]
    return out_boxes, out_cls, out_col


# ---------------------------------------------------------------------------------- metadata
def _field_range(ranges: Mapping[str, tuple[float, float]], name: str) -> tuple[float, float]:
    if name not in ranges:
        raise ValueError(f"no range given for metadata field {name!r}")
    lo, hi = ranges[name]
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"range of metadata field {name!r} ({lo}, {hi}) must have hi > lo")
    return lo, hi


def metadata_to_tokens(
    tok: TextTokenizer,
    values: Mapping[str, float],
    *,
    ranges: Mapping[str, tuple[float, float]],
) -> list[int]:
    """``[META_<field>] v=<bin>`` per field, in the order of ``values``; values are clipped to
    ``ranges[field]``. Unknown fields, missing ranges and non-finite values raise ValueError."""
    cfg = tok.require_config()
    out: list[int] = []
    for name, value in values.items():
        if name not in cfg.metadata_fields:
            raise ValueError(
                f"unknown metadata field {name!r}; this tokenizer knows {list(cfg.metadata_fields)}"
            )
        lo, hi = _field_range(ranges, name)
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"metadata field {name!r} has non-finite value {value!r}")
        b = int(quantize(v, lo, hi, cfg.num_value_bins))
        out += [tok.meta_token_id(name), tok.value_token_id(b)]
    return out


def tokens_to_metadata(
    tok: TextTokenizer,
    ids: Any,
    *,
    ranges: Mapping[str, tuple[float, float]],
) -> dict[str, float]:
    """Inverse of :func:`metadata_to_tokens`: field -> bin centre. Stops at the first EOS/PAD;
    a repeated field or a malformed pair raises ValueError."""
    cfg = tok.require_config()
    seq = _cut(tok, ids)
    out: dict[str, float] = {}
    for pos in range(0, len(seq), 2):
        name = tok.meta_from_id(seq[pos])
        if name is None:
            raise ValueError(
                f"tokens_to_metadata: position {pos}: expected a metadata field token, "
                f"got {tok.describe_id(seq[pos])}"
            )
        if pos + 1 >= len(seq):
            raise ValueError(
                f"tokens_to_metadata: position {pos + 1}: expected a value token 'v=' for "
                f"field {name!r}, but the sequence ends"
            )
        b = tok.value_bin_from_id(seq[pos + 1])
        if b is None:
            raise ValueError(
                f"tokens_to_metadata: position {pos + 1}: expected a value token 'v=' for "
                f"field {name!r}, got {tok.describe_id(seq[pos + 1])}"
            )
        if name in out:
            raise ValueError(f"tokens_to_metadata: position {pos}: field {name!r} repeated")
        lo, hi = _field_range(ranges, name)
        out[name] = float(dequantize(b, lo, hi, cfg.num_value_bins))
    return out
