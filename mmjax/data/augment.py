"""Augmentations applied identically to every aligned modality of an example.

A random crop and a horizontal flip move all image-like modalities together; the derived
modalities follow exactly: boxes are recomputed from the cropped/flipped instance map (so
each box is still the tight box of its instance's visible pixels), normals' x component
changes sign under a flip, and "left"/"right" swap in captions.
"""

import re

import numpy as np

IMAGE_KEYS = ("rgb", "depth", "normals", "semseg", "instance")
BOX_KEYS = ("boxes", "box_class", "box_color", "box_instance")
_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def boxes_from_instance(instance: np.ndarray, ids: np.ndarray, classes, colors):
    """Tight inclusive boxes (x_min, y_min, x_max, y_max) of the given instance ids, visible
    ones first in the given order, then -1 / 0 padding rows (the scenes' box layout)."""
    m = len(ids)
    boxes = np.full((m, 4), -1, np.int32)
    out_class, out_color = np.zeros(m, np.int32), np.full(m, -1, np.int32)
    out_ids = np.zeros(m, np.int32)
    row = 0
    for i, inst in enumerate(ids):
        if inst <= 0:
            continue
        ys, xs = np.nonzero(instance == inst)
        if len(xs) == 0:
            continue
        boxes[row] = (xs.min(), ys.min(), xs.max(), ys.max())
        out_class[row], out_color[row], out_ids[row] = classes[i], colors[i], inst
        row += 1
    return boxes, out_class, out_color, out_ids


def crop_and_flip(example: dict, top: int, left: int, size: int, flip: bool) -> dict:
    """The deterministic core: crops [top:top+size, left:left+size], then mirrors x."""
    out = dict(example)
    for key in IMAGE_KEYS:
        if key in out:
            a = out[key][top : top + size, left : left + size]
            if flip:
                a = a[:, ::-1]
            if key == "normals" and flip:
                a = a * np.array([-1.0, 1.0, 1.0], a.dtype)
            out[key] = np.ascontiguousarray(a)
    return follow_derived(example, out, flip)


def follow_derived(example: dict, out: dict, flip: bool) -> dict:
    """Makes the derived fields of `out` (whose image modalities were cropped, resized or
    flipped from `example`'s) agree with them: boxes from the new instance map, left/right
    swapped in the caption under a flip."""
    if all(k in out for k in BOX_KEYS) and "instance" in out:
        boxes, cls, col, ids = boxes_from_instance(
            out["instance"], example["box_instance"], example["box_class"], example["box_color"]
        )
        out.update(boxes=boxes, box_class=cls, box_color=col, box_instance=ids)
    if flip and isinstance(out.get("caption"), str):
        out["caption"] = _LEFT_RIGHT.sub(
            lambda m: "right" if m.group(1) == "left" else "left", out["caption"]
        )
    return out


class RandomCropFlip:
    """Random crop to `crop_size` (None: no crop) and random horizontal flip with
    probability `flip_prob`, one draw per example (a grain random map)."""

    def __init__(self, crop_size: int | None = None, flip_prob: float = 0.5):
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {crop_size}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}")
        self.crop_size, self.flip_prob = crop_size, flip_prob

    def __call__(self, example: dict, rng: np.random.Generator) -> dict:
        key = next((k for k in IMAGE_KEYS if k in example), None)
        if key is None:
            return example  # e.g. pre-tokenized records: nothing spatial to move
        h, w = example[key].shape[:2]
        size = self.crop_size or min(h, w)
        if size > min(h, w):
            raise ValueError(f"crop_size {size} is larger than the {h}x{w} images")
        top = int(rng.integers(0, h - size + 1))
        left = int(rng.integers(0, w - size + 1))
        return crop_and_flip(example, top, left, size, bool(rng.random() < self.flip_prob))
