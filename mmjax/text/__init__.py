"""Text tokenizer for the sequence modalities (captions, boxes, metadata) of 4M-style models.

``tokenizer`` trains/loads/saves a WordPiece tokenizer whose vocabulary starts with a fixed block
of special tokens; ``serializers`` turns boxes and scalar metadata into those tokens and back.
``ml4m_tokenizer`` loads an ml-4m tokenizer JSON in ml-4m's own layout; ``ml4m_serializers`` and
``ml4m_framing`` write and read ml-4m's det and caption text and frame it with [EOS] and sentinels.
"""

from mmjax.text.ml4m_framing import (
    ml4m_as_input,
    ml4m_as_target,
    ml4m_merge_spans,
    ml4m_sequence,
    ml4m_span_mask,
    ml4m_strip_target,
)
from mmjax.text.ml4m_serializers import (
    ML4M_COORD_BINS,
    caption_to_ml4m_ids,
    det_to_ml4m_ids,
    det_to_ml4m_text,
    ml4m_box_order,
    ml4m_dequantize_coords,
    ml4m_ids_to_caption,
    ml4m_ids_to_det,
    ml4m_quantize_coords,
    ml4m_text_to_det,
)
from mmjax.text.ml4m_tokenizer import Ml4mTextTokenizer, load_ml4m_tokenizer
from mmjax.text.serializers import (
    boxes_to_tokens,
    dequantize,
    metadata_to_tokens,
    quantize,
    scene_boxes_to_tokens,
    tokens_to_boxes,
    tokens_to_metadata,
    tokens_to_scene_boxes,
)
from mmjax.text.tokenizer import (
    COORD_AXES,
    TextTokenizer,
    TextTokenizerConfig,
    train_tokenizer,
)

__all__ = [
    "COORD_AXES",
    "ML4M_COORD_BINS",
    "Ml4mTextTokenizer",
    "TextTokenizer",
    "TextTokenizerConfig",
    "boxes_to_tokens",
    "caption_to_ml4m_ids",
    "dequantize",
    "det_to_ml4m_ids",
    "det_to_ml4m_text",
    "load_ml4m_tokenizer",
    "metadata_to_tokens",
    "ml4m_as_input",
    "ml4m_as_target",
    "ml4m_box_order",
    "ml4m_dequantize_coords",
    "ml4m_ids_to_caption",
    "ml4m_ids_to_det",
    "ml4m_merge_spans",
    "ml4m_quantize_coords",
    "ml4m_sequence",
    "ml4m_span_mask",
    "ml4m_strip_target",
    "ml4m_text_to_det",
    "quantize",
    "scene_boxes_to_tokens",
    "tokens_to_boxes",
    "tokens_to_metadata",
    "tokens_to_scene_boxes",
    "train_tokenizer",
]
