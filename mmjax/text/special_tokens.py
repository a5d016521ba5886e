"""The fixed block of special tokens at the start of every mmjax text vocabulary (pad, eos,
unk, sos, T5-style sentinels, box-coordinate bins, class, colour and metadata words, value
bins), its layout (:class:`TextTokenizerConfig`) and the check that a vocabulary follows it.
See :mod:`mmjax.text.tokenizer` for the id table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tokenizers import (
    Tokenizer,
)

PAD_TOKEN = "[PAD]"
EOS_TOKEN = "[EOS]"
UNK_TOKEN = "[UNK]"
SOS_TOKEN = "[SOS]"
CORE_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, SOS_TOKEN)
COORD_AXES = ("xmin", "ymin", "xmax", "ymax")
MIN_SENTINELS = 100

FORMAT_VERSION = 1


def sentinel_token(i: int) -> str:
    return f"[S_{i}]"


def coord_token(axis: str, bin_: int) -> str:
    return f"{axis}={bin_}"


def class_token(word: str) -> str:
    return f"[CLASS_{word}]"


def color_token(word: str) -> str:
    return f"[COLOR_{word}]"


def meta_token(name: str) -> str:
    return f"[META_{name}]"


def value_token(bin_: int) -> str:
    return f"v={bin_}"


def _check_words(kind: str, words: Sequence[str]) -> tuple[str, ...]:
    if isinstance(words, str):
        raise TypeError(f"{kind} must be a sequence of strings, got the string {words!r}")
    out = tuple(words)
    seen: set[str] = set()
    for w in out:
        if not isinstance(w, str) or not w or w != w.strip():
            raise ValueError(
                f"{kind}: every entry must be a non-empty string without leading/trailing "
                f"whitespace, got {w!r}"
            )
        if w in seen:
            raise ValueError(f"{kind}: duplicate entry {w!r}")
        seen.add(w)
    return out


@dataclass(frozen=True)
class TextTokenizerConfig:
    """The mmjax settings that define the special-token block (see the module docstring)."""

    num_sentinels: int = 100
    num_coord_bins: int = 64
    class_words: tuple[str, ...] = field(default=())
    color_words: tuple[str, ...] = field(default=())
    metadata_fields: tuple[str, ...] = field(default=())
    num_value_bins: int = 32

    def __post_init__(self) -> None:
        for name in ("num_sentinels", "num_coord_bins", "num_value_bins"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or isinstance(v, bool):
                raise TypeError(f"{name} must be an int, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.num_sentinels < MIN_SENTINELS:
            raise ValueError(
                f"num_sentinels={self.num_sentinels}: 4M-style span masking needs at least "
                f"{MIN_SENTINELS} sentinel tokens"
            )
        if self.num_coord_bins < 1:
            raise ValueError(f"num_coord_bins={self.num_coord_bins} must be >= 1")
        if self.num_value_bins < 1:
            raise ValueError(f"num_value_bins={self.num_value_bins} must be >= 1")
        object.__setattr__(self, "class_words", _check_words("class_words", self.class_words))
        object.__setattr__(self, "color_words", _check_words("color_words", self.color_words))
        object.__setattr__(
            self, "metadata_fields", _check_words("metadata_fields", self.metadata_fields)
        )

    # Offsets of each block in the vocabulary.
    @property
    def sentinel_offset(self) -> int:
        return len(CORE_TOKENS)

    @property
    def coord_offset(self) -> int:
        return self.sentinel_offset + self.num_sentinels

    @property
    def class_offset(self) -> int:
        return self.coord_offset + len(COORD_AXES) * self.num_coord_bins

    @property
    def color_offset(self) -> int:
        return self.class_offset + len(self.class_words)

    @property
    def meta_offset(self) -> int:
        return self.color_offset + len(self.color_words)

    @property
    def value_offset(self) -> int:
        return self.meta_offset + len(self.metadata_fields)

    @property
    def num_special_tokens(self) -> int:
        return self.value_offset + self.num_value_bins

    def special_tokens(self) -> list[str]:
        """All special token strings; the token at list index i has vocabulary id i."""
        toks = list(CORE_TOKENS)
        toks += [sentinel_token(i) for i in range(self.num_sentinels)]
        for axis in COORD_AXES:
            toks += [coord_token(axis, b) for b in range(self.num_coord_bins)]
        toks += [class_token(w) for w in self.class_words]
        toks += [color_token(w) for w in self.color_words]
        toks += [meta_token(f) for f in self.metadata_fields]
        toks += [value_token(b) for b in range(self.num_value_bins)]
        return toks

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("class_words", "color_words", "metadata_fields"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextTokenizerConfig:
        if not isinstance(d, dict):
            raise ValueError(f"mmjax settings must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        version = d.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"unsupported mmjax tokenizer format_version {version!r} "
                f"(this version reads {FORMAT_VERSION})"
            )
        expected = {f for f in cls.__dataclass_fields__}
        if set(d) != expected:
            raise ValueError(
                f"mmjax settings have keys {sorted(d)}, expected exactly {sorted(expected)}"
            )
        for k in ("class_words", "color_words", "metadata_fields"):
            if not isinstance(d[k], list):
                raise ValueError(f"mmjax settings: {k} must be a list, got {d[k]!r}")
            d[k] = tuple(d[k])
        return cls(**d)


def _check_layout(tokenizer: Tokenizer, config: TextTokenizerConfig) -> None:
    """Raise ValueError unless every special token sits at its fixed id as one added token."""
    added = tokenizer.get_added_tokens_decoder()
    for i, tok in enumerate(config.special_tokens()):
        got = tokenizer.token_to_id(tok)
        if got != i or i not in added or added[i].content != tok:
            raise ValueError(
                f"special token {tok!r} should have id {i} as an added token, "
                f"but the vocabulary has id {got}"
            )
