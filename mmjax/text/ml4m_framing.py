"""How ml-4m frames a text sequence (caption, det) with [EOS] and sentinels, as 4M input/target.

ml-4m first appends [EOS] to the token ids and then truncates to ``max_tokens`` (so a long text
loses its [EOS]). Span masking replaces each masked run by the next sentinel, numbered from
[S_1]; the target lists every run after its sentinel and always ends with the next unused
sentinel::

    sequence  a b c d e [EOS]        (c d and [EOS] masked)
    input     a b [S_1] e [S_2]
    target    [S_1] c d [S_2] [EOS] [S_3]

A text given whole as input is ``ids [EOS]`` with target ``[S_1]``; a text to generate whole
is the input ``[S_1]`` (empty in training) with target ``[S_1] ids [EOS] [S_2]``; ml-4m's
generation stops at that final sentinel. :func:`ml4m_merge_spans` puts input and target back
together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmjax.text.ml4m_tokenizer import Ml4mTextTokenizer

__all__ = [
    "ml4m_as_input",
    "ml4m_as_target",
    "ml4m_merge_spans",
    "ml4m_sequence",
    "ml4m_span_mask",
    "ml4m_strip_target",
]


def _ids(ids: Any, name: str) -> list[int]:
    arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D sequence of int token ids, got shape {arr.shape}")
    return [int(i) for i in arr]


def _check_tok(tok: Any) -> Ml4mTextTokenizer:
    if not isinstance(tok, Ml4mTextTokenizer):
        raise TypeError(f"expected an Ml4mTextTokenizer, got {type(tok).__name__}")
    return tok


def ml4m_sequence(tok: Ml4mTextTokenizer, ids: Any, max_tokens: int | None = None) -> list[int]:
    """``ids + [EOS]``, then cut to ``max_tokens`` (ml-4m's order: the cut may drop [EOS])."""
    tok = _check_tok(tok)
    seq = [*_ids(ids, "ids"), tok.eos_id]
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int | np.integer):
            raise TypeError(f"max_tokens must be an int or None, got {max_tokens!r}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens} must be >= 1")
        seq = seq[: int(max_tokens)]
    return seq


def ml4m_span_mask(tok: Ml4mTextTokenizer, seq: Any, mask: Any) -> tuple[list[int], list[int]]:
    """(input, target) of ``seq`` with ``mask`` (bool, True = masked), as ml-4m's span masking
    builds them for a given mask (see the module docstring)."""
    tok = _check_tok(tok)
    seq = _ids(seq, "seq")
    m = np.asarray(mask)
    if m.shape != (len(seq),) or m.dtype != bool:
        raise ValueError(
            f"mask must be a bool array of shape ({len(seq)},), got {m.dtype} {m.shape}"
        )
    sentinels = tok.sentinel_ids
    runs = int(np.sum(m & ~np.concatenate([[False], m[:-1]])))
    if runs + 1 > len(sentinels):
        raise ValueError(
            f"{runs} masked runs need {runs + 1} sentinels, the tokenizer has {len(sentinels)}"
        )
    inp: list[int] = []
    tgt: list[int] = []
    used, prev = 0, False
    for token, masked in zip(seq, m.tolist(), strict=True):
        if masked:
            if not prev:
                inp.append(sentinels[used])
                tgt.append(sentinels[used])
                used += 1
            tgt.append(token)
        else:
            inp.append(token)
        prev = masked
    tgt.append(sentinels[used])
    return inp, tgt


def ml4m_as_input(
    tok: Ml4mTextTokenizer, ids: Any, max_tokens: int | None = None
) -> tuple[list[int], list[int]]:
    """(input, target) of a text given whole as input: ``(ids [EOS], [S_1])``."""
    seq = ml4m_sequence(tok, ids, max_tokens)
    return ml4m_span_mask(tok, seq, np.zeros(len(seq), bool))


def ml4m_as_target(
    tok: Ml4mTextTokenizer, ids: Any, max_tokens: int | None = None
) -> tuple[list[int], list[int]]:
    """(input, target) of a text to be predicted whole: ``([], [S_1] ids [EOS] [S_2])``; the
    input is empty as in ml-4m's training (its generation feeds ``[S_1]`` instead)."""
    seq = ml4m_sequence(tok, ids, max_tokens)
    _, tgt = ml4m_span_mask(tok, seq, np.ones(len(seq), bool))
    return [], tgt


def ml4m_merge_spans(tok: Ml4mTextTokenizer, inp: Any, target: Any) -> list[int]:
    """The sequence with each sentinel of ``inp`` replaced by the tokens after that sentinel
    in ``target`` (a sentinel the target does not fill disappears), as ml-4m merges them."""
    tok = _check_tok(tok)
    inp, target = _ids(inp, "input"), _ids(target, "target")
    sentinels = tok.layout.sentinel_id_set
    spans: dict[int | None, list[int]] = {}
    current: int | None = None
    for t in target:
        if t in sentinels:
            current = t
        else:
            spans.setdefault(current, []).append(t)
    out: list[int] = []
    for t in inp:
        if t in sentinels:
            out += spans.get(t, [])
        else:
            out.append(t)
    return out


def ml4m_strip_target(tok: Ml4mTextTokenizer, target: Sequence[int]) -> list[int]:
    """The content of a generated whole-sequence target (``[S_1] ... [EOS] [S_2]``): the tokens
    after [S_1], up to the first [EOS] or PAD or later sentinel (what ml-4m's merge keeps of it,
    without the [EOS])."""
    tok = _check_tok(tok)
    merged = ml4m_merge_spans(tok, [tok.start_id], target)
    stop = {tok.eos_id, tok.pad_id}
    for pos, t in enumerate(merged):
        if t in stop:
            return merged[:pos]
    return merged
