"""ml-4m's ``det`` and ``caption`` text: serialize and parse, as strings and as token ids.

A detection is written as ml-4m's ``DetectionTransform`` writes it: per box
``v0=<xmin> v1=<ymin> v2=<xmax> v3=<ymax> <class name>``, boxes joined by single spaces, where
each coordinate is normalised to ``[0, 1]`` and quantised to ``round(c * (n - 1))`` with
Python's round (half to even) over ``n`` bins (1000 in ml-4m), and the class name is plain words
(``sports ball``). Parsing maps bin ``b`` back to ``b / (n - 1)`` (ml-4m's plotting code), so
``parse(serialize(x))`` is within ``0.5 / (n - 1)`` of ``x`` and serializing a parsed detection
gives the same text. Boxes keep the order they are given in (:func:`ml4m_box_order` sorts them
as ml-4m's transform does before writing).

A caption is its text; its ids are the tokenizer's encoding, without special tokens. Neither
id form carries [EOS]: :mod:`mmjax.text.ml4m_framing` adds it and the sentinels. Id parsers stop
at the first [EOS] or [PAD].
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmjax.text.ml4m_layout import ML4M_COORD_PREFIXES
from mmjax.text.ml4m_tokenizer import Ml4mTextTokenizer

__all__ = [
    "ML4M_COORD_BINS",
    "caption_to_ml4m_ids",
    "det_to_ml4m_ids",
    "det_to_ml4m_text",
    "ml4m_box_order",
    "ml4m_dequantize_coords",
    "ml4m_ids_to_caption",
    "ml4m_ids_to_det",
    "ml4m_quantize_coords",
    "ml4m_text_to_det",
]

ML4M_COORD_BINS = 1000
_COORD_WORD = re.compile(r"(v[0-3])=(\d+)")


def _check_bins(num_bins: Any) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, int | np.integer) or num_bins < 2:
        raise ValueError(f"num_bins must be an int >= 2, got {num_bins!r}")
    return int(num_bins)


def ml4m_quantize_coords(values: Any, num_bins: int = ML4M_COORD_BINS) -> np.ndarray:
    """int64 ``round(v * (num_bins - 1))`` (half to even) of normalised coordinates in [0, 1]."""
    n = _check_bins(num_bins)
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("box coordinates must be finite")
    if np.any((v < 0) | (v > 1)):
        raise ValueError(
            f"box coordinates must be normalised to [0, 1] (ml-4m's format), got values in "
            f"[{v.min()}, {v.max()}]"
        )
    return np.rint(v * (n - 1)).astype(np.int64)


def ml4m_dequantize_coords(bins: Any, num_bins: int = ML4M_COORD_BINS) -> np.ndarray:
    """float64 ``b / (num_bins - 1)``."""
    n = _check_bins(num_bins)
    return np.asarray(bins, dtype=np.float64) / (n - 1)


def _check_boxes(boxes: Any, classes: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4] (xmin, ymin, xmax, ymax), got {b.shape}")
    if isinstance(classes, str):
        raise TypeError("classes must be a sequence of class names, got a single str")
    classes = list(classes)
    if len(classes) != len(b):
        raise ValueError(f"got {len(b)} boxes but {len(classes)} class names")
    for i, name in enumerate(classes):
        if not isinstance(name, str) or not name or name != " ".join(name.split()):
            raise ValueError(
                f"class name {i} {name!r} must be non-empty words separated by single spaces"
            )
        if "=" in name:
            raise ValueError(f"class name {name!r} contains '=', which marks coordinate tokens")
    bad = np.flatnonzero((b[:, 0] > b[:, 2]) | (b[:, 1] > b[:, 3]))
    if bad.size:
        raise ValueError(f"boxes {bad.tolist()} have xmin > xmax or ymin > ymax")
    return b, classes


def det_to_ml4m_text(boxes: Any, classes: Sequence[str], *, num_bins: int = ML4M_COORD_BINS) -> str:
    """ml-4m's det string of N boxes ([N, 4] normalised xmin, ymin, xmax, ymax) and names."""
    b, classes = _check_boxes(boxes, classes)
    q = ml4m_quantize_coords(b, num_bins)
    words = []
    for row, name in zip(q, classes, strict=True):
        words += [f"{p}={int(v)}" for p, v in zip(ML4M_COORD_PREFIXES, row, strict=True)]
        words.append(name)
    return " ".join(words)


def ml4m_text_to_det(
    text: str, *, num_bins: int = ML4M_COORD_BINS, drop_incomplete: bool = False
) -> tuple[np.ndarray, list[str]]:
    """(boxes float64 [N, 4] at ``bin / (n - 1)``, class names) of a det string. ``[PAD]`` words
    are skipped and the first ``[EOS]`` ends the text (as ml-4m's plotting code does). A
    malformed text raises ValueError naming the word; with ``drop_incomplete`` a last box cut
    short (a generation that hit its length limit) is dropped instead."""
    if not isinstance(text, str):
        raise TypeError(f"expected a det string, got {type(text).__name__}")
    n = _check_bins(num_bins)
    words = [w for w in text.split() if w != "[PAD]"]
    if "[EOS]" in words:
        words = words[: words.index("[EOS]")]
    bins: list[list[int]] = []
    names: list[list[str]] = []
    for pos, w in enumerate(words):
        m = _COORD_WORD.fullmatch(w)
        if "=" in w and m is None:
            raise ValueError(f"det text word {pos} {w!r}: not a coordinate v0= .. v3=<bin>")
        if m is not None:
            axis, b = ML4M_COORD_PREFIXES.index(m.group(1)), int(m.group(2))
            expected = 0 if not bins or names[-1] else len(bins[-1])
            if expected == 4 or axis != expected:
                what = "a class name" if expected == 4 else f"v{expected}="
                raise ValueError(f"det text word {pos} {w!r}: expected {what}")
            if b >= n:
                raise ValueError(f"det text word {pos} {w!r}: bin outside [0, {n - 1}]")
            if axis == 0:
                bins.append([])
                names.append([])
            bins[-1].append(b)
        else:
            if not bins or len(bins[-1]) < 4:
                got = len(bins[-1]) if bins else 0
                raise ValueError(f"det text word {pos} {w!r}: expected v{got}=")
            names[-1].append(w)
    if bins and not names[-1]:
        if not drop_incomplete:
            raise ValueError(
                f"det text ends inside box {len(bins) - 1} ({len(bins[-1])} coordinates, "
                f"no class name)"
            )
        bins, names = bins[:-1], names[:-1]
    boxes = ml4m_dequantize_coords(np.asarray(bins, np.int64).reshape(-1, 4), n)
    return boxes, [" ".join(w) for w in names]


def ml4m_box_order(boxes: Any, order: str = "dist_to_orig") -> np.ndarray:
    """Indices that sort boxes as ml-4m's DetectionTransform does before writing them (stable):
    ``dist_to_orig`` by xmin^2 + ymin^2 ascending (its default), ``area`` by area descending."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if order == "dist_to_orig":
        key = b[:, 0] ** 2 + b[:, 1] ** 2
    elif order == "area":
        key = -((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    else:
        raise ValueError(f"order must be 'dist_to_orig' or 'area', got {order!r}")
    return np.argsort(key, kind="stable")


# ---------------------------------------------------------------------------------- token ids
def _cut(tok: Ml4mTextTokenizer, ids: Any) -> list[int]:
    arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"expected a 1-D sequence of int token ids, got shape {arr.shape}")
    out = []
    for i in arr.tolist():
        if i in (tok.eos_id, tok.pad_id):
            break
        if not 0 <= i < tok.vocab_size:
            raise ValueError(f"token id {i} outside the vocabulary [0, {tok.vocab_size})")
        out.append(i)
    return out


def _check_ml4m(tok: Any) -> Ml4mTextTokenizer:
    if not isinstance(tok, Ml4mTextTokenizer):
        raise TypeError(f"expected an Ml4mTextTokenizer, got {type(tok).__name__}")
    return tok


def _not_word_ids(tok: Ml4mTextTokenizer) -> set[int]:
    lay = tok.layout
    return {lay.pad_id, lay.eos_id, *lay.sentinel_id_set} | (
        set() if lay.sos_id is None else {lay.sos_id}
    )


def det_to_ml4m_ids(tok: Ml4mTextTokenizer, boxes: Any, classes: Sequence[str]) -> list[int]:
    """Token ids of :func:`det_to_ml4m_text` (bins from the tokenizer); each class name must
    read back unchanged through the tokenizer (ml-4m's lowercases, for one)."""
    tok = _check_ml4m(tok)
    n = tok.layout.require_coords()
    b, classes = _check_boxes(boxes, classes)
    specials = _not_word_ids(tok)
    for name in set(classes):
        ids = tok.encode(name)
        back = tok.decode(ids)
        if back != name or any(i in specials or tok.layout.coord_from_id(i) for i in ids):
            raise ValueError(
                f"class name {name!r} does not survive this tokenizer (it reads back as "
                f"{back!r}); use lowercase words of its vocabulary"
            )
    return tok.encode(det_to_ml4m_text(b, classes, num_bins=n))


def ml4m_ids_to_det(
    tok: Ml4mTextTokenizer, ids: Any, *, drop_incomplete: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Inverse of :func:`det_to_ml4m_ids`: (boxes float64 [N, 4] at ``bin / (n - 1)``, class
    names). Stops at the first [EOS]/[PAD]; a malformed sequence raises ValueError naming the
    position (``drop_incomplete``: a last box cut short is dropped instead)."""
    tok = _check_ml4m(tok)
    n = tok.layout.require_coords()
    seq = _cut(tok, ids)
    specials = _not_word_ids(tok)
    bins: list[list[int]] = []
    names: list[list[int]] = []
    for pos, i in enumerate(seq):
        c = tok.layout.coord_from_id(i)
        if c is not None:
            axis, b = c
            expected = 0 if not bins or names[-1] else len(bins[-1])
            if expected == 4 or axis != expected:
                what = "a class-name token" if expected == 4 else f"a v{expected}= token"
                raise ValueError(
                    f"det ids position {pos}: expected {what}, got {tok.describe_id(i)}"
                )
            if axis == 0:
                bins.append([])
                names.append([])
            bins[-1].append(b)
            continue
        if not bins or len(bins[-1]) < 4:
            got = len(bins[-1]) if bins else 0
            raise ValueError(
                f"det ids position {pos}: expected a v{got}= token, got {tok.describe_id(i)}"
            )
        if i in specials:
            raise ValueError(f"det ids position {pos}: {tok.describe_id(i)} inside a class name")
        if not names[-1] and tok.id_to_token(i).startswith("##"):
            raise ValueError(
                f"det ids position {pos}: class name starts with the word-piece continuation "
                f"{tok.describe_id(i)}"
            )
        names[-1].append(i)
    if bins and not names[-1]:
        if not drop_incomplete:
            raise ValueError(
                f"det ids end inside box {len(bins) - 1} ({len(bins[-1])} coordinates, no class)"
            )
        bins, names = bins[:-1], names[:-1]
    boxes = ml4m_dequantize_coords(np.asarray(bins, np.int64).reshape(-1, 4), n)
    return boxes, [tok.decode(name) for name in names]


def caption_to_ml4m_ids(tok: Ml4mTextTokenizer, text: str) -> list[int]:
    """The caption's token ids as ml-4m encodes it (no special tokens; framing adds [EOS])."""
    return _check_ml4m(tok).encode(text)


def ml4m_ids_to_caption(tok: Ml4mTextTokenizer, ids: Any) -> str:
    """The caption text of ``ids`` up to the first [EOS]/[PAD]; other special tokens (a stray
    sentinel, say) stay visible as ml-4m's decoding shows them."""
    tok = _check_ml4m(tok)
    return tok.decode(_cut(tok, ids))
