"""The special tokens of an ml-4m text tokenizer JSON, found by name, and their mmjax roles.

ml-4m's WordPiece tokenizers (e.g. its ``text_tokenizer_4m_wordpiece_30k.json``) start with
``[PAD] [UNK] [SOS] [EOS]``, then sentinels ``[S_0] .. [S_{k-1}]``, then box-coordinate tokens
``v0=0 .. v0={n-1}``, ``v1=..``, ``v2=..``, ``v3=..`` (xmin, ymin, xmax, ymax; n = 1000 in the
released file), then object-class names (``person``, ``sports ball``, ...), all as added tokens.
The ids differ from mmjax's own layout, so they are looked up by name here:

    role        token      note
    pad_id      [PAD]      required
    eos_id      [EOS]      required; closes every sequence before span masking
    unk_id      [UNK]      optional
    sos_id      [SOS]      optional (ml-4m never places it)
    start_id    [S_1]      required; ml-4m numbers masked spans from [S_1], so a whole-sequence
                           target reads ``[S_1] ... [EOS] [S_2]`` and generation starts there
    sentinels   [S_1] ..   required: [S_1] and [S_2] at least, numbered without gaps ([S_0] may
                           be present; ml-4m never uses it)
    coordinates v0= .. v3= optional as a block (detections need it): the same n bins 0..n-1 for
                           each of the four axes, each an added token
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tokenizers import Tokenizer

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
SOS_TOKEN = "[SOS]"
EOS_TOKEN = "[EOS]"
ML4M_COORD_PREFIXES = ("v0", "v1", "v2", "v3")  # xmin, ymin, xmax, ymax
_SENTINEL_RE = re.compile(r"\[S_(\d+)\]")
_COORD_RE = re.compile(r"(v[0-3])=(\d+)")


def ml4m_sentinel_token(k: int) -> str:
    return f"[S_{k}]"


def ml4m_coord_token(axis: int, bin_: int) -> str:
    """``v{axis}={bin}``; axis 0..3 is xmin, ymin, xmax, ymax."""
    return f"v{axis}={bin_}"


@dataclass(frozen=True)
class Ml4mLayout:
    """Ids of an ml-4m tokenizer's special tokens (see the module docstring)."""

    pad_id: int
    eos_id: int
    unk_id: int | None
    sos_id: int | None
    # span_sentinel_ids[j] is the id of [S_{j+1}]: the order in which ml-4m's span masking
    # hands out sentinels.
    span_sentinel_ids: tuple[int, ...]
    sentinel_zero_id: int | None  # [S_0], unused by ml-4m
    num_coord_bins: int  # 0 when the vocabulary has no coordinate tokens
    coord_ids: tuple[tuple[int, ...], ...]  # [4][num_coord_bins]
    class_words: tuple[str, ...]  # the other added tokens, in id order (object-class names)
    _coord_of: dict[int, tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        inverse = {i: (a, b) for a, ids in enumerate(self.coord_ids) for b, i in enumerate(ids)}
        object.__setattr__(self, "_coord_of", inverse)

    @property
    def start_id(self) -> int:
        """[S_1]: the first token of every ml-4m target and of generation."""
        return self.span_sentinel_ids[0]

    @property
    def sentinel_id_set(self) -> frozenset[int]:
        ids = set(self.span_sentinel_ids)
        if self.sentinel_zero_id is not None:
            ids.add(self.sentinel_zero_id)
        return frozenset(ids)

    def sentinel(self, k: int) -> int:
        """Id of ``[S_k]``."""
        if k == 0 and self.sentinel_zero_id is not None:
            return self.sentinel_zero_id
        if not 1 <= k <= len(self.span_sentinel_ids):
            lo = 0 if self.sentinel_zero_id is not None else 1
            raise ValueError(
                f"sentinel [S_{k}] not in this vocabulary ([S_{lo}] .. "
                f"[S_{len(self.span_sentinel_ids)}])"
            )
        return self.span_sentinel_ids[k - 1]

    def coord_from_id(self, id_: int) -> tuple[int, int] | None:
        """(axis 0..3, bin) of a coordinate token id, or None."""
        return self._coord_of.get(int(id_))

    def require_coords(self) -> int:
        if self.num_coord_bins == 0:
            raise ValueError(
                "this ml-4m tokenizer has no box-coordinate tokens (v0=0 .. v3=<n-1>), "
                "so detections cannot be serialized with it"
            )
        return self.num_coord_bins


def _added_ids(tokenizer: Tokenizer) -> dict[str, int]:
    return {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items()}


def find_ml4m_layout(tokenizer: Tokenizer, *, source: str = "tokenizer") -> Ml4mLayout:
    """The :class:`Ml4mLayout` of ``tokenizer``; ValueError naming the missing or malformed
    token when the vocabulary does not follow ml-4m's layout."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    added = _added_ids(tokenizer)

    def required(token: str, why: str) -> int:
        if token not in vocab:
            raise ValueError(f"{source}: ml-4m tokenizer has no {token} token ({why})")
        if token not in added:
            raise ValueError(
                f"{source}: {token} is in the vocabulary but not an added token, so text "
                f"containing it would be split into word pieces"
            )
        return vocab[token]

    pad_id = required(PAD_TOKEN, "padding")
    eos_id = required(EOS_TOKEN, "end of sequence")

    sentinels: dict[int, int] = {}
    coords: dict[str, dict[int, int]] = {p: {} for p in ML4M_COORD_PREFIXES}
    for token, i in vocab.items():
        if m := _SENTINEL_RE.fullmatch(token):
            k = int(m.group(1))
            if m.group(1) != str(k):
                raise ValueError(f"{source}: sentinel {token!r} has a zero-padded number")
            sentinels[k] = i
        elif (m := _COORD_RE.fullmatch(token)) and m.group(2) == str(int(m.group(2))):
            coords[m.group(1)][int(m.group(2))] = i
    for k in (1, 2):
        required(ml4m_sentinel_token(k), "ml-4m frames each target with [S_1] ... [S_2]")
    n = max(sentinels)
    gaps = sorted(set(range(1, n + 1)) - set(sentinels))
    if gaps:
        raise ValueError(
            f"{source}: sentinels must be numbered [S_1] .. [S_{n}] without gaps; missing "
            f"{', '.join(ml4m_sentinel_token(k) for k in gaps[:5])}"
        )
    for k in sentinels:
        if ml4m_sentinel_token(k) not in added:
            raise ValueError(f"{source}: sentinel {ml4m_sentinel_token(k)} is not an added token")

    counts = {p: len(c) for p, c in coords.items()}
    num_bins = counts["v0"]
    if any(counts.values()):
        for p, c in coords.items():
            if sorted(c) != list(range(num_bins)):
                raise ValueError(
                    f"{source}: coordinate tokens must be {p}=0 .. {p}={num_bins - 1} like "
                    f"v0= ({num_bins} bins), found {len(c)} {p}= tokens"
                )
            for b in range(num_bins):
                if f"{p}={b}" not in added:
                    raise ValueError(f"{source}: coordinate token {p}={b} is not an added token")
    coord_ids = tuple(tuple(coords[p][b] for b in range(num_bins)) for p in ML4M_COORD_PREFIXES)

    layout_ids = {pad_id, eos_id, *sentinels.values(), *(i for c in coord_ids for i in c)}
    core = {PAD_TOKEN, UNK_TOKEN, SOS_TOKEN, EOS_TOKEN}
    class_words = tuple(
        t
        for t, i in sorted(added.items(), key=lambda kv: kv[1])
        if i not in layout_ids and t not in core
    )
    return Ml4mLayout(
        pad_id=pad_id,
        eos_id=eos_id,
        unk_id=vocab.get(UNK_TOKEN),
        sos_id=vocab.get(SOS_TOKEN),
        span_sentinel_ids=tuple(sentinels[k] for k in range(1, n + 1)),
        sentinel_zero_id=sentinels.get(0),
        num_coord_bins=num_bins,
        coord_ids=coord_ids if num_bins else ((), (), (), ()),
        class_words=class_words,
    )
