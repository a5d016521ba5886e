"""Text tokenizer for the sequence modalities (captions, boxes, metadata) of 4M-style models.

``tokenizer`` trains/loads/saves a WordPiece tokenizer whose vocabulary starts with a fixed block
of special tokens; ``serializers`` turns boxes and scalar metadata into those tokens and back.
"""

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
    "TextTokenizer",
    "TextTokenizerConfig",
    "boxes_to_tokens",
    "dequantize",
    "metadata_to_tokens",
    "quantize",
    "scene_boxes_to_tokens",
    "tokens_to_boxes",
    "tokens_to_metadata",
    "tokens_to_scene_boxes",
    "train_tokenizer",
]
