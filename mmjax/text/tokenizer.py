"""WordPiece text tokenizer with 4M-style special tokens (sentinels, box coordinates, metadata).

The vocabulary always starts with a fixed block of special tokens whose ids depend only on
:class:`TextTokenizerConfig`, never on the training corpus::

    id                        token                 count
    0                         [PAD]                 1
    1                         [EOS]                 1
    2                         [UNK]                 1
    3                         [SOS]                 1
    4 ...                     [S_0] .. [S_{k-1}]    num_sentinels (>= 100, T5-style sentinels)
    coord_offset ...          xmin=0 .. xmin={n-1}  num_coord_bins, then the same for
                              ymin=, xmax=, ymax=   (4 * num_coord_bins in all)
    class_offset ...          [CLASS_<word>]        one per class word, in the given order
    color_offset ...          [COLOR_<word>]        one per colour word, in the given order
    meta_offset ...           [META_<field>]        one per metadata field, in the given order
    value_offset ...          v=0 .. v={m-1}        num_value_bins
    num_special_tokens ...    learned WordPiece vocabulary

All of them are added to the ``tokenizers`` vocabulary as special added tokens, so they are
matched verbatim (case-sensitive, on the raw text) and never split by the pre-tokenizer.
Ordinary text is lowercased (``BertNormalizer``), split on whitespace and punctuation
(``BertPreTokenizer``) and cut into WordPieces.

:meth:`TextTokenizer.save` writes a single ``tokenizers`` JSON file. The mmjax settings are stored
in it under the key ``"mmjax"`` of the ``"model"`` object (``Tokenizer.from_str`` rejects unknown
top-level keys but ignores unknown keys inside the model, so the file stays loadable by plain
``tokenizers``); :meth:`TextTokenizer.load` removes that key before handing the JSON to
``tokenizers`` and checks the stored settings against the vocabulary.
"""

from __future__ import annotations

import contextlib
import errno
import json
import operator
import string
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
)

from mmjax.storage import paths
from mmjax.text.special_tokens import (
    COORD_AXES,
    CORE_TOKENS,
    EOS_TOKEN,
    FORMAT_VERSION,
    PAD_TOKEN,
    SOS_TOKEN,
    UNK_TOKEN,
    TextTokenizerConfig,
    _check_layout,
)
from mmjax.text.wordpiece_training import count_words, learn_vocab

__all__ = [
    "COORD_AXES",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SOS_TOKEN",
    "UNK_TOKEN",
    "TextTokenizer",
    "TextTokenizerConfig",
    "train_tokenizer",
]

# Key under the JSON "model" object that holds the mmjax settings, and its format version.
_JSON_KEY = "mmjax"
# Conventional names tried for pad/eos when a plain tokenizers JSON (no mmjax settings) is loaded.
_PAD_FALLBACKS = (PAD_TOKEN, "<pad>")
_EOS_FALLBACKS = (EOS_TOKEN, "</s>", "<eos>")
# Characters always given a vocabulary entry (word-initial and, for letters and digits,
# "##"-continuation form), so lowercase ASCII text never maps to [UNK].
_COVERAGE_WORD = "0" + string.ascii_lowercase + string.digits
_COVERAGE_PUNCT = " ".join(string.punctuation)


def read_tokenizer_json(text: str, source: str) -> dict:
    """The parsed `tokenizers` JSON file, or a ValueError naming `source` and the problem."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not a valid JSON tokenizer file: {e}") from e
    if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
        raise ValueError(f"{source}: not a tokenizers JSON file (no 'model' object)")
    return d


def tokenizer_from_json(text: str, source: str) -> Tokenizer:
    """`tokenizers.Tokenizer.from_str`, its bare Exception as a ValueError naming `source`."""
    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception
        raise ValueError(f"{source}: tokenizers could not load this file: {e}") from e


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` plus mmjax's special-token layout.

    ``config`` is None for a tokenizer loaded from a plain ``tokenizers`` JSON; then ``encode`` /
    ``decode`` work as usual (``pad_id`` / ``eos_id`` are looked up as ``[PAD]``/``<pad>`` and
    ``[EOS]``/``</s>``/``<eos>``), but the sentinel, coordinate, class, colour and metadata
    accessors (and hence the serializers) raise ValueError.

    Padding and truncation configured inside the wrapped tokenizer are switched off (on a copy):
    :meth:`encode_batch` pads and truncates itself. Its post-processor is not applied either
    (``add_special_tokens=False``); mmjax frames sequences only with ``[EOS]``.
    """

    def __init__(self, tokenizer: Tokenizer, config: TextTokenizerConfig | None = None):
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        tokenizer = Tokenizer.from_str(tokenizer.to_str())  # private copy
        tokenizer.no_padding()
        tokenizer.no_truncation()
        if config is not None:
            _check_layout(tokenizer, config)
        self._tok = tokenizer
        self._config = config

    # ------------------------------------------------------------------ basic properties
    @property
    def tokenizer(self) -> Tokenizer:
        """The wrapped ``tokenizers.Tokenizer`` (padding/truncation disabled)."""
        return self._tok

    @property
    def config(self) -> TextTokenizerConfig | None:
        return self._config

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def require_config(self) -> TextTokenizerConfig:
        if self._config is None:
            raise ValueError(
                "this TextTokenizer has no mmjax special-token layout (it was loaded from a plain "
                "tokenizers JSON, not one written by TextTokenizer.save or train_tokenizer), so "
                "sentinel, coordinate, class, colour and metadata tokens are unavailable"
            )
        return self._config

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, id_: int) -> str | None:
        return self._tok.id_to_token(int(id_))

    def _named_id(self, candidates: Sequence[str], role: str) -> int:
        if self._config is not None:
            return CORE_TOKENS.index(candidates[0])
        for name in candidates:
            i = self._tok.token_to_id(name)
            if i is not None:
                return i
        raise ValueError(f"tokenizer has no {role} token (looked for {', '.join(candidates)})")

    @property
    def pad_id(self) -> int:
        return self._named_id(_PAD_FALLBACKS, "padding")

    @property
    def eos_id(self) -> int:
        return self._named_id(_EOS_FALLBACKS, "end-of-sequence")

    @property
    def unk_id(self) -> int:
        return self._named_id((UNK_TOKEN,), "unknown")

    @property
    def sos_id(self) -> int:
        return self._named_id((SOS_TOKEN,), "start-of-sequence")

    # ------------------------------------------------------------------ special-token ids
    @property
    def num_special_tokens(self) -> int:
        return self.require_config().num_special_tokens

    @property
    def sentinel_ids(self) -> list[int]:
        c = self.require_config()
        return list(range(c.sentinel_offset, c.sentinel_offset + c.num_sentinels))

    def sentinel(self, i: int) -> int:
        c = self.require_config()
        i = operator.index(i)
        if not 0 <= i < c.num_sentinels:
            raise ValueError(f"sentinel index {i} out of range [0, {c.num_sentinels})")
        return c.sentinel_offset + int(i)

    def coord_token_id(self, axis: str, bin_: int) -> int:
        c = self.require_config()
        if axis not in COORD_AXES:
            raise ValueError(f"unknown coordinate axis {axis!r}; expected one of {COORD_AXES}")
        bin_ = operator.index(bin_)
        if not 0 <= bin_ < c.num_coord_bins:
            raise ValueError(f"coordinate bin {bin_} out of range [0, {c.num_coord_bins})")
        return c.coord_offset + COORD_AXES.index(axis) * c.num_coord_bins + int(bin_)

    def class_token_id(self, word: str) -> int:
        c = self.require_config()
        if word not in c.class_words:
            raise ValueError(f"unknown class word {word!r}; known: {list(c.class_words)}")
        return c.class_offset + c.class_words.index(word)

    def color_token_id(self, word: str) -> int:
        c = self.require_config()
        if word not in c.color_words:
            raise ValueError(f"unknown colour word {word!r}; known: {list(c.color_words)}")
        return c.color_offset + c.color_words.index(word)

    def meta_token_id(self, name: str) -> int:
        c = self.require_config()
        if name not in c.metadata_fields:
            raise ValueError(f"unknown metadata field {name!r}; known: {list(c.metadata_fields)}")
        return c.meta_offset + c.metadata_fields.index(name)

    def value_token_id(self, bin_: int) -> int:
        c = self.require_config()
        bin_ = operator.index(bin_)
        if not 0 <= bin_ < c.num_value_bins:
            raise ValueError(f"value bin {bin_} out of range [0, {c.num_value_bins})")
        return c.value_offset + int(bin_)

    # Reverse lookups: the decoded meaning of an id, or None if it is not in that block.
    def coord_from_id(self, id_: int) -> tuple[str, int] | None:
        c = self.require_config()
        k = int(id_) - c.coord_offset
        if not 0 <= k < len(COORD_AXES) * c.num_coord_bins:
            return None
        return COORD_AXES[k // c.num_coord_bins], k % c.num_coord_bins

    def class_from_id(self, id_: int) -> str | None:
        c = self.require_config()
        k = int(id_) - c.class_offset
        return c.class_words[k] if 0 <= k < len(c.class_words) else None

    def color_from_id(self, id_: int) -> str | None:
        c = self.require_config()
        k = int(id_) - c.color_offset
        return c.color_words[k] if 0 <= k < len(c.color_words) else None

    def meta_from_id(self, id_: int) -> str | None:
        c = self.require_config()
        k = int(id_) - c.meta_offset
        return c.metadata_fields[k] if 0 <= k < len(c.metadata_fields) else None

    def value_bin_from_id(self, id_: int) -> int | None:
        c = self.require_config()
        k = int(id_) - c.value_offset
        return k if 0 <= k < c.num_value_bins else None

    def describe_id(self, id_: int) -> str:
        """Human-readable form of an id for error messages."""
        tok = self._tok.id_to_token(int(id_)) if 0 <= int(id_) < self.vocab_size else None
        return f"{tok!r} (id {int(id_)})" if tok is not None else f"out-of-vocabulary id {id_}"

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no EOS, no post-processor special tokens)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, dropping pad and EOS tokens (all other special tokens are kept)."""
        arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"decode expects a 1-D sequence of int ids, got shape {arr.shape}")
        ids = [int(i) for i in arr]
        n = self.vocab_size
        for pos, i in enumerate(ids):
            if not 0 <= i < n:
                raise ValueError(f"decode: id {i} at position {pos} outside [0, {n})")
        drop = set()
        for role in ("pad_id", "eos_id"):
            with contextlib.suppress(ValueError):
                drop.add(getattr(self, role))
        return self._tok.decode([i for i in ids if i not in drop], skip_special_tokens=False)

    def encode_batch(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """int32 [B, max_length]: each row is ``encode(text)`` cut to ``max_length - 1`` tokens,
        then EOS, then pad ids up to ``max_length`` (EOS survives truncation)."""
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a sequence of strings, got a single str")
        if not isinstance(max_length, int | np.integer) or max_length < 1:
            raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encode_batch expects strings, got {type(t).__name__}")
        eos, pad = self.eos_id, self.pad_id
        out = np.full((len(texts), int(max_length)), pad, dtype=np.int32)
        encodings = self._tok.encode_batch(texts, add_special_tokens=False) if texts else []
        for row, enc in enumerate(encodings):
            ids = enc.ids[: max_length - 1]
            out[row, : len(ids)] = ids
            out[row, len(ids)] = eos
        return out

    # ------------------------------------------------------------------ persistence
    def to_json_str(self) -> str:
        """The single-file JSON (``tokenizers`` format with the mmjax settings embedded)."""
        d = json.loads(self._tok.to_str())
        if self._config is not None:
            d["model"][_JSON_KEY] = {"format_version": FORMAT_VERSION, **self._config.to_dict()}
        return json.dumps(d, ensure_ascii=False)

    def save(self, path: str | Path) -> Path:
        """Writes the JSON file (local or gs://, whole or not at all); returns its path."""
        paths.write_text(path, self.to_json_str())
        return paths.as_path(path)

    @classmethod
    def from_json_str(cls, text: str, *, source: str = "<string>") -> TextTokenizer:
        d = read_tokenizer_json(text, source)
        extras = d["model"].pop(_JSON_KEY, None)
        tok = tokenizer_from_json(json.dumps(d), source)
        try:
            config = None if extras is None else TextTokenizerConfig.from_dict(extras)
            return cls(tok, config)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: invalid mmjax tokenizer settings: {e}") from e

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """Load a file written by :meth:`save`, or any plain ``tokenizers`` JSON file."""
        path = paths.as_path(path)  # local or gs://
        if not paths.exists(path) or paths.isdir(path):
            raise FileNotFoundError(errno.ENOENT, f"tokenizer file not found: {path}", str(path))
        try:
            text = paths.read_text(path)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not a UTF-8 JSON tokenizer file: {e}") from e
        return cls.from_json_str(text, source=str(path))

    def __repr__(self) -> str:
        c = self._config
        extra = "plain tokenizers JSON" if c is None else f"{c.num_special_tokens} special tokens"
        return f"TextTokenizer(vocab_size={self.vocab_size}, {extra})"


def _training_iterator(texts: Iterable[str]) -> Iterator[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, got a single str")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must contain strings, got {type(t).__name__}")
        yield t
    yield _COVERAGE_WORD
    yield _COVERAGE_PUNCT


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int = 1000,
    num_sentinels: int = 100,
    num_coord_bins: int = 64,
    class_words: Sequence[str] = (),
    color_words: Sequence[str] = (),
    metadata_fields: Sequence[str] = (),
    num_value_bins: int = 32,
) -> TextTokenizer:
    """Train a lowercasing WordPiece tokenizer on ``texts`` with the mmjax special-token block.

    ``vocab_size`` is the target total size, special tokens included (as for the ``tokenizers``
    trainer): it must exceed the number of special tokens. The learned part always contains
    lowercase ASCII letters, digits and ASCII punctuation (also as ``##`` continuations), so
    lowercase ASCII text never becomes ``[UNK]``; the result is smaller than ``vocab_size`` when
    the corpus is too small to fill it.
    """
    config = TextTokenizerConfig(
        num_sentinels=num_sentinels,
        num_coord_bins=num_coord_bins,
        class_words=class_words,
        color_words=color_words,
        metadata_fields=metadata_fields,
        num_value_bins=num_value_bins,
    )
    specials = config.special_tokens()
    if not isinstance(vocab_size, int | np.integer) or vocab_size <= len(specials):
        raise ValueError(
            f"vocab_size={vocab_size} must exceed the number of special tokens "
            f"({len(specials)}: 4 core + {config.num_sentinels} sentinels + "
            f"{4 * config.num_coord_bins} coordinates + {len(config.class_words)} classes + "
            f"{len(config.color_words)} colours + {len(config.metadata_fields)} metadata fields + "
            f"{config.num_value_bins} value bins)"
        )
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # Not the `tokenizers` trainer: its ties depend on hash-map order, so one corpus gives
    # another vocabulary in every process (mmjax.text.wordpiece_training).
    words = count_words(_training_iterator(texts), normalizer, pre_tokenizer)
    vocab = learn_vocab(words, specials, int(vocab_size), prefix="##")
    tok = Tokenizer(
        models.WordPiece(
            {t: i for i, t in enumerate(vocab)}, unk_token=UNK_TOKEN, continuing_subword_prefix="##"
        )
    )
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens(
        [
            AddedToken(
                s, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True
            )
            for s in specials
        ]
    )
    return TextTokenizer(tok, config)
