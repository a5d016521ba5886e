"""The scenes' text vocabulary: the WordPiece tokenizer of captions, boxes and metadata, and
the fixed conventions that turn a scene into those three token sequences.

Box classes are the semseg class names (a box's `box_class` indexes SEMSEG_CLASSES), colours
are COLOR_NAMES, and metadata fields are METADATA_FIELDS, each quantized into the tokenizer's
value bins over the range below (values outside are clipped into the first or last bin):

    object_count     [-0.5, 6.5]   integers land in a bin whose centre rounds back to them
    mean_brightness  [0.25, 0.75]  mean rgb value (observed 0.36 .. 0.59)
    colourfulness    [0.0, 0.4]    Hasler-Suesstrunk / 255 (observed 0.07 .. 0.29)
    floor_fraction   [0.0, 1.0]    fraction of floor pixels
    mean_depth       [6.0, 12.0]   camera z-depth of hit pixels (observed 7.7 .. 10.7)
    occluded_count   [-0.5, 6.5]   integers, as object_count

With the default 32 value bins every field decodes to within half a bin of its value.
"""

import numpy as np

from mmjax.data.scenes.constants import COLOR_NAMES, MAX_OBJECTS, METADATA_FIELDS, SEMSEG_CLASSES

CLASS_WORDS = SEMSEG_CLASSES
COLOR_WORDS = COLOR_NAMES
_COUNT_RANGE = (-0.5, MAX_OBJECTS + 0.5)
METADATA_RANGES = {
    "object_count": _COUNT_RANGE,
    "mean_brightness": (0.25, 0.75),
    "colourfulness": (0.0, 0.4),
    "floor_fraction": (0.0, 1.0),
    "mean_depth": (6.0, 12.0),
    "occluded_count": _COUNT_RANGE,
}
assert set(METADATA_RANGES) == set(METADATA_FIELDS)


def scenes_text_tokenizer(
    num_examples: int = 2000,
    vocab_size: int = 1000,
    *,
    split: str = "train",
    resolution: int = 32,
    num_coord_bins: int = 64,
    num_value_bins: int = 32,
):
    """A WordPiece TextTokenizer trained on the captions of the first `num_examples` scenes
    of `split`, with the scenes' class, colour and metadata-field special tokens.

    Captions barely depend on the render size (only through which objects are visible), so
    a small `resolution` keeps this fast (about 2 ms a scene). The same arguments give the
    same vocabulary in every process (`mmjax.text.wordpiece_training`).
    """
    from mmjax.data import scenes
    from mmjax.text import train_tokenizer

    if num_examples < 1:
        raise ValueError(f"scenes_text_tokenizer: num_examples must be >= 1, got {num_examples}")
    captions = (scenes.generate(i, split, resolution)["caption"] for i in range(num_examples))
    return train_tokenizer(
        captions,
        vocab_size=vocab_size,
        num_coord_bins=num_coord_bins,
        class_words=CLASS_WORDS,
        color_words=COLOR_WORDS,
        metadata_fields=METADATA_FIELDS,
        num_value_bins=num_value_bins,
    )


def check_scenes_text_tokenizer(tok, where: str = "text tokenizer") -> None:
    """Raises ValueError unless `tok` has every class, colour and metadata token the scenes
    need (e.g. a plain tokenizers JSON, or one trained for another dataset)."""
    try:
        config = tok.require_config()
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    for kind, have, need in (
        ("class words", config.class_words, CLASS_WORDS),
        ("colour words", config.color_words, COLOR_WORDS),
        ("metadata fields", config.metadata_fields, METADATA_FIELDS),
    ):
        missing = [w for w in need if w not in have]
        if missing:
            raise ValueError(f"{where}: lacks the scenes' {kind} {missing} (it has {list(have)})")


def reading_order(boxes) -> np.ndarray:
    """Row order of a scene's boxes int [M, 4] for serializing: left to right by x_min, then
    top to bottom by y_min (then x_max, y_max), padding rows (all -1) last, wherever they are.
    The scenes store boxes in instance order, which is random: an autoregressive decoder
    reading the image cannot know which object comes first, but it can see the leftmost."""
    b = np.asarray(boxes).reshape(-1, 4)
    pad = np.all(b == -1, axis=1)
    return np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], pad))


def scene_text_tokens(tok, example: dict, image_size: int) -> dict:
    """The three sequence modalities of one scene (or view) as int32 arrays, no EOS:
    caption (WordPiece ids), boxes (6 tokens per visible box, `scene_boxes_to_tokens` with
    coordinates over `image_size`, in `reading_order`) and metadata (2 tokens per field,
    METADATA_RANGES)."""
    from mmjax.text import metadata_to_tokens, scene_boxes_to_tokens

    order = reading_order(example["boxes"])
    boxes = scene_boxes_to_tokens(
        tok,
        np.asarray(example["boxes"])[order],
        np.asarray(example["box_class"])[order],
        np.asarray(example["box_color"])[order],
        class_words=CLASS_WORDS,
        color_words=COLOR_WORDS,
        image_size=image_size,
    )
    values = dict(zip(METADATA_FIELDS, np.asarray(example["metadata"]).tolist(), strict=True))
    return {
        "caption": np.asarray(tok.encode(str(example["caption"])), np.int32),
        "boxes": np.asarray(boxes, np.int32),
        "metadata": np.asarray(metadata_to_tokens(tok, values, ranges=METADATA_RANGES), np.int32),
    }
