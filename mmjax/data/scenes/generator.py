"""``generate(index, split, resolution)``: one deterministic synthetic multimodal scene."""

import numbers

import numpy as np

from mmjax.data.scenes.annotations import boxes, metadata, visible_instances
from mmjax.data.scenes.caption import make_caption
from mmjax.data.scenes.render import render
from mmjax.data.scenes.sampling import caption_rng, sample_scene, validate_index_split


def validate_resolution(resolution):
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, numbers.Integral)
        or resolution <= 0
        or resolution % 8
    ):
        raise ValueError(f"resolution must be a positive multiple of 8, got {resolution!r}")


def generate(index: int, split: str = "train", resolution: int = 64) -> dict:
    """Render scene ``index`` of ``split`` at ``resolution`` x ``resolution`` pixels.

    Returns rgb [R, R, 3] f32, depth [R, R] f32 (camera z-depth, 0 on background),
    normals [R, R, 3] f32 (camera space, x right / y up / z toward the camera, 0 on
    background), semseg [R, R] i32, instance [R, R] i32, boxes [MAX_OBJECTS, 4] i32,
    box_class / box_color / box_instance [MAX_OBJECTS] i32, caption str and metadata
    [len(METADATA_FIELDS)] f32. Bit-identical for equal arguments.
    """
    validate_index_split(index, split)
    validate_resolution(resolution)
    scene = sample_scene(index, split)
    out = render(scene, int(resolution))
    rgb = out["rgb"].astype(np.float32)
    depth = out["depth"].astype(np.float32)
    instance = out["instance"]
    box, box_class, box_color, box_instance = boxes(instance, scene.objects)
    visible = visible_instances(instance, len(scene.objects))
    return {
        "rgb": rgb,
        "depth": depth,
        "normals": out["normals"].astype(np.float32),
        "semseg": out["semseg"],
        "instance": instance,
        "boxes": box,
        "box_class": box_class,
        "box_color": box_color,
        "box_instance": box_instance,
        "caption": make_caption(scene, visible, caption_rng(scene)),
        "metadata": metadata(rgb, depth, out["semseg"], instance, out["own_hit"]),
    }
