"""Templated English captions: the visible objects, then a few spatial relations.

Objects are always named by their canonical words "<size> <colour> <shape>" (sizes from
SIZE_NAMES, colours from COLOR_NAMES, shapes from SHAPE_NAMES); colour-shape pairs are
unique within a scene, so every mention names exactly one object. The scene's caption RNG
picks the sentence templates, object order and which relations are stated.

Relations are from the camera's view, between object centres: "left of"/"right of"
compare the horizontal image coordinate x_cam / depth; "in front of"/"behind" compare the
camera z-depth. A relation is only stated with a clear margin (LR_MARGIN, DEPTH_MARGIN).
"""

import numpy as np

from mmjax.data.scenes.constants import COLOR_NAMES, SHAPE_NAMES, SIZE_NAMES

LR_MARGIN = 0.08  # in image-plane units (tan of the angle)
DEPTH_MARGIN = 0.6  # world units
MAX_RELATIONS = 3

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six")

_INTRO = (
    "A scene with {items}.",
    "There {are} {count} {objects} on the floor: {items}.",
    "The image shows {items}.",
    "{Items} {rest} on a checkered floor.",
    "In this picture we can see {items}.",
)
_RELATION = (
    "The {a} is {rel} the {b}.",
    "The {a} sits {rel} the {b}.",
    "The {a} is located {rel} the {b}.",
)
_REL_PHRASES = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "in front of": ("in front of",),
    "behind": ("behind",),
}
_INVERSE = {
    "left of": "right of",
    "right of": "left of",
    "in front of": "behind",
    "behind": "in front of",
}


def object_phrase(obj) -> str:
    return f"{SIZE_NAMES[obj.size]} {COLOR_NAMES[obj.color]} {SHAPE_NAMES[obj.shape]}"


def _join(items):
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def camera_positions(scene):
    """(image x, depth) of every object's centre, from the camera's view."""
    centres = np.array([o.centre for o in scene.objects]).reshape(-1, 3)
    cam = scene.camera.world_to_camera(centres)
    depth = -cam[:, 2]
    return cam[:, 0] / depth, depth


def candidate_relations(scene, a: int, b: int):
    """Relations "a <rel> b" (0-based object indices) that hold with a clear margin."""
    img_x, depth = camera_positions(scene)
    rels = []
    dx = img_x[a] - img_x[b]
    if abs(dx) > LR_MARGIN:
        rels.append("left of" if dx < 0 else "right of")
    dz = depth[a] - depth[b]
    if abs(dz) > DEPTH_MARGIN:
        rels.append("in front of" if dz < 0 else "behind")
    return rels


def make_caption(scene, visible_ids, rng) -> str:
    """Caption naming exactly the objects with ids ``visible_ids`` (1-based)."""
    ids = [int(k) - 1 for k in visible_ids]
    if not ids:
        return "An empty floor with no objects."
    order = [ids[i] for i in rng.permutation(len(ids))]
    phrases = ["a " + object_phrase(scene.objects[i]) for i in order]
    items = _join(phrases)
    n = len(ids)
    template = _INTRO[int(rng.integers(len(_INTRO)))]
    sentences = [
        template.format(
            items=items,
            Items=items[0].upper() + items[1:],
            are="is" if n == 1 else "are",
            rest="rests" if n == 1 else "rest",
            count=NUMBER_WORDS[n],
            objects="object" if n == 1 else "objects",
        )
    ]
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]
    stated = 0
    for p in rng.permutation(len(pairs)):
        if stated >= MAX_RELATIONS:
            break
        a, b = pairs[int(p)]
        rels = candidate_relations(scene, a, b)
        if not rels:
            continue
        rel = rels[int(rng.integers(len(rels)))]
        if rng.integers(2):  # state it the other way round
            a, b, rel = b, a, _INVERSE[rel]
        phrase_options = _REL_PHRASES[rel]
        phrase = phrase_options[int(rng.integers(len(phrase_options)))]
        template = _RELATION[int(rng.integers(len(_RELATION)))]
        sentences.append(
            template.format(
                a=object_phrase(scene.objects[a]), rel=phrase, b=object_phrase(scene.objects[b])
            )
        )
        stated += 1
    return " ".join(sentences)
