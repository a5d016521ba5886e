"""Deterministic synthetic multimodal scenes (pure numpy ray casting).

``generate(index, split, resolution)`` renders one scene: rgb, depth, normals, semantic
and instance segmentation, boxes, a templated caption and scalar metadata.
"""

from mmjax.data.scenes.constants import (
    COLOR_NAMES,
    COLOR_RGB,
    IMAGE_MODALITIES,
    MAX_OBJECTS,
    METADATA_FIELDS,
    SEMSEG_CLASSES,
    SHAPE_NAMES,
    SIZE_NAMES,
    SPLITS,
)
from mmjax.data.scenes.contact_sheet import save_contact_sheet
from mmjax.data.scenes.generator import generate
from mmjax.data.scenes.sampling import sample_scene

__all__ = [
    "COLOR_NAMES",
    "COLOR_RGB",
    "IMAGE_MODALITIES",
    "MAX_OBJECTS",
    "METADATA_FIELDS",
    "SEMSEG_CLASSES",
    "SHAPE_NAMES",
    "SIZE_NAMES",
    "SPLITS",
    "generate",
    "sample_scene",
    "save_contact_sheet",
]
