"""Caption metrics: the (colour, shape) pairs a caption names, a scene's visible objects, and
how well a generated caption recalls them."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

from mmjax.data.scenes.constants import COLOR_NAMES, SEMSEG_CLASSES, SHAPE_NAMES, SIZE_NAMES
from mmjax.eval.checks import fail, ratio

_COLOR_SET = frozenset(COLOR_NAMES)
_SIZE_SET = frozenset(SIZE_NAMES)


def _shape_word(word: str) -> str | None:
    if word in SHAPE_NAMES:
        return word
    if word.endswith("s") and word[:-1] in SHAPE_NAMES:
        return word[:-1]
    return None


def caption_objects(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a caption names, e.g. {("red", "cube"), ("blue", "sphere")}.

    The scenes' captions name every object as "<size> <colour> <shape>" (in the object list and
    again in the relation sentences), and colour-shape pairs are unique within a scene, so the
    set of pairs is the set of objects named. Parsing is case-insensitive and ignores
    punctuation and WordPiece spacing (``TextTokenizer.decode`` output works): a pair is a
    colour word followed by a shape word (plural accepted), optionally with one size word in
    between ("red small cube"). A shape with no colour before it names no pair.
    """
    if not isinstance(text, str):
        raise ValueError(f"caption_objects: text must be a str, got {type(text).__name__}")
    words = re.findall(r"[a-z]+", text.lower())
    pairs = set()
    for j, word in enumerate(words):
        shape = _shape_word(word)
        if shape is None:
            continue
        i = j - 1
        if i >= 0 and words[i] in _SIZE_SET:
            i -= 1
        if i >= 0 and words[i] in _COLOR_SET:
            pairs.add((words[i], shape))
    return pairs


def visible_objects(example: Mapping) -> set[tuple[str, str]]:
    """The (colour, shape) pairs of the objects visible in a ``scenes.generate`` example (at
    least one pixel): its box rows, read from ``box_color`` and ``box_class`` where
    ``box_instance > 0``. These are exactly the objects its caption names."""
    fn = "visible_objects"
    for key in ("box_color", "box_class", "box_instance"):
        if key not in example:
            fail(fn, "example", f"lacks {key!r} (expected a scenes.generate example)")
    colors = np.asarray(example["box_color"]).reshape(-1)
    classes = np.asarray(example["box_class"]).reshape(-1)
    inst = np.asarray(example["box_instance"]).reshape(-1)
    if not (len(colors) == len(classes) == len(inst)):
        fail(fn, "example", "has box_color, box_class, box_instance of different lengths")
    out = set()
    for c, k, i in zip(colors, classes, inst, strict=True):
        if i <= 0:
            continue
        if not (0 <= c < len(COLOR_NAMES)) or SEMSEG_CLASSES[int(k)] not in SHAPE_NAMES:
            fail(fn, "example", f"has a visible box with colour id {c} and class id {k}")
        out.add((COLOR_NAMES[int(c)], SEMSEG_CLASSES[int(k)]))
    return out


def check_pairs(fn: str, arg: str, objects) -> set[tuple[str, str]]:
    """``objects`` as a set of (colour, shape) pairs; anything else raises ValueError."""
    if isinstance(objects, str):
        fail(fn, arg, "must be an iterable of (colour, shape) pairs, got a str")
    out = set()
    for item in objects:
        if (
            not isinstance(item, tuple | list)
            or len(item) != 2
            or item[0] not in _COLOR_SET
            or item[1] not in SHAPE_NAMES
        ):
            fail(
                fn,
                arg,
                f"must hold (colour, shape) pairs with colour in {COLOR_NAMES} and shape in "
                f"{SHAPE_NAMES}, got {item!r}",
            )
        out.add((item[0], item[1]))
    return out


def caption_recall_precision(pred_text: str, true_objects: Iterable) -> dict[str, float]:
    """How well a generated caption names a scene's objects.

    ``true_objects`` is the set of (colour, shape) pairs of the visible objects, e.g.
    ``visible_objects(example)`` (equivalently ``caption_objects(example["caption"])``).
    Returns ``pair_recall`` / ``pair_precision`` over (colour, shape) pairs, and
    ``shape_recall`` / ``shape_precision`` over the multisets of shapes of those pairs (a
    "red cube" for a true "blue cube" gets the shape right). An empty denominator gives 1.0
    (nothing to recall, or nothing claimed).
    """
    fn = "caption_recall_precision"
    if not isinstance(pred_text, str):
        fail(fn, "pred_text", f"must be a str, got {type(pred_text).__name__}")
    pred = caption_objects(pred_text)
    true = check_pairs(fn, "true_objects", true_objects)
    hit = len(pred & true)
    pred_shapes = Counter(s for _, s in pred)
    true_shapes = Counter(s for _, s in true)
    shape_hit = sum((pred_shapes & true_shapes).values())
    return {
        "pair_recall": ratio(hit, len(true)),
        "pair_precision": ratio(hit, len(pred)),
        "shape_recall": ratio(shape_hit, len(true)),
        "shape_precision": ratio(shape_hit, len(pred)),
    }


def objects_caption(objects: Iterable) -> str:
    """A caption naming (colour, shape) pairs ("A scene with a red cube and a blue sphere."),
    in the order given; ``caption_objects`` parses it back."""
    items = []
    for item in objects:
        pair = check_pairs("objects_caption", "objects", [item])
        items.append("a {} {}".format(*pair.pop()))
    if not items:
        return "An empty floor with no objects."
    text = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"A scene with {text}."
