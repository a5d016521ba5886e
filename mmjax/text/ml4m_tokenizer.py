"""An ml-4m text tokenizer JSON (HuggingFace ``tokenizers`` format) as an mmjax TextTokenizer.

``Ml4mTextTokenizer.load(path)`` (local or gs://) reads a file such as ml-4m's
``text_tokenizer_4m_wordpiece_30k.json`` unchanged and finds its special tokens by name
(:mod:`mmjax.text.ml4m_layout`), so ``pad_id``, ``eos_id``, ``unk_id``, ``sos_id`` and the
sentinels carry ml-4m's ids. mmjax's own special-token accessors (``coord_token_id``,
``class_token_id``, ...) raise: ml-4m's detections and captions go through
:mod:`mmjax.text.ml4m_serializers` and :mod:`mmjax.text.ml4m_framing` instead.
"""

from __future__ import annotations

from tokenizers import Tokenizer

from mmjax.text.ml4m_layout import Ml4mLayout, find_ml4m_layout
from mmjax.text.tokenizer import (
    _JSON_KEY,
    TextTokenizer,
    read_tokenizer_json,
    tokenizer_from_json,
)

__all__ = ["Ml4mTextTokenizer", "load_ml4m_tokenizer"]


class Ml4mTextTokenizer(TextTokenizer):
    """A ``tokenizers.Tokenizer`` in ml-4m's special-token layout.

    ``sentinel_ids`` lists ``[S_1], [S_2], ...``: the order in which ml-4m's span masking uses
    them (``[S_0]`` is never used there); ``sentinel(k)`` is the id of ``[S_k]``; ``start_id``
    is ``[S_1]``. ``encode_batch`` keeps mmjax's framing ([EOS] survives truncation);
    :func:`mmjax.text.ml4m_framing.ml4m_sequence` frames as ml-4m does.
    """

    def __init__(self, tokenizer: Tokenizer, *, source: str = "tokenizer"):
        super().__init__(tokenizer, None)
        self._layout = find_ml4m_layout(self._tok, source=source)

    @property
    def layout(self) -> Ml4mLayout:
        return self._layout

    def require_config(self):
        raise ValueError(
            "this is an ml-4m tokenizer: it has no mmjax special-token layout (xmin=, [CLASS_..], "
            "v=); use mmjax.text.ml4m_serializers for ml-4m detections and captions"
        )

    # The roles, by ml-4m's ids.
    @property
    def pad_id(self) -> int:
        return self._layout.pad_id

    @property
    def eos_id(self) -> int:
        return self._layout.eos_id

    @property
    def unk_id(self) -> int:
        if self._layout.unk_id is None:
            raise ValueError("this ml-4m tokenizer has no [UNK] token")
        return self._layout.unk_id

    @property
    def sos_id(self) -> int:
        if self._layout.sos_id is None:
            raise ValueError("this ml-4m tokenizer has no [SOS] token")
        return self._layout.sos_id

    @property
    def start_id(self) -> int:
        return self._layout.start_id

    @property
    def sentinel_ids(self) -> list[int]:
        return list(self._layout.span_sentinel_ids)

    def sentinel(self, i: int) -> int:
        return self._layout.sentinel(int(i))

    @property
    def num_coord_bins(self) -> int:
        """Bins per box coordinate (1000 in ml-4m's released tokenizer; 0 when absent)."""
        return self._layout.num_coord_bins

    @classmethod
    def from_json_str(cls, text: str, *, source: str = "<string>") -> Ml4mTextTokenizer:
        d = read_tokenizer_json(text, source)
        if _JSON_KEY in d["model"]:
            raise ValueError(
                f"{source}: this is an mmjax-layout tokenizer (it carries mmjax settings); "
                f"load it with TextTokenizer.load, not as an ml-4m tokenizer"
            )
        return cls(tokenizer_from_json(text, source), source=source)

    def __repr__(self) -> str:
        lay = self._layout
        return (
            f"Ml4mTextTokenizer(vocab_size={self.vocab_size}, "
            f"sentinels [S_1]..[S_{len(lay.span_sentinel_ids)}], "
            f"{lay.num_coord_bins} coordinate bins, "
            f"{len(lay.class_words)} class words)"
        )


def load_ml4m_tokenizer(path) -> Ml4mTextTokenizer:
    """Load an ml-4m text tokenizer JSON (local or gs://)."""
    return Ml4mTextTokenizer.load(path)
