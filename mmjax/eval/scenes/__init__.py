"""Any-to-any metrics against the scenes' exact ground truth, and trivial baselines (numpy only).

Everything here takes plain arrays in the units of ``mmjax.data.scenes.generate`` (or of a
modality codec's ``postprocess``, which returns the same units) and returns plain floats:

- depth: camera z-depth in world units (about 6 .. 16 on hit pixels), exactly 0 where the ray
  hits nothing (sky). ``depth_errors`` scores the pixels with true depth > 0.
- normals: camera-space unit vectors (x right, y up, z toward the camera), exactly 0 on the sky.
  ``normals_angular_error`` scores the pixels with |true| > 0.5.
- semseg: int class ids indexing ``SEMSEG_CLASSES`` (background, floor, sphere, cube, cylinder).
- caption: templated English; ``caption_objects`` reads the (colour, shape) pairs it names.
- boxes: inclusive pixel boxes ``(x_min, y_min, x_max, y_max)`` int [M, 4] padded with rows of
  -1, with class ids (into ``SEMSEG_CLASSES``) and colour ids (into ``COLOR_NAMES``): the form of
  the scene's ``boxes`` / ``box_class`` / ``box_color`` and of ``tokens_to_scene_boxes``.
- rgb: [H, W, 3] floats in [0, 1]; ``colour_presence`` checks which named colours appear.

``visible_objects(example)`` gives the ground truth the caption and colour metrics need. The
``*_baseline`` functions return predictions in the same forms, so a caller scores a model and its
baselines with the same metric calls. Bad inputs (shape mismatches, values out of range, wrong
dtypes) raise ValueError naming the argument and what was expected.
"""

from mmjax.eval.scenes.baselines import (
    frequent_objects_caption_baseline,
    majority_class_baseline,
    mean_depth_baseline,
    mean_image_baseline,
    mean_normals_baseline,
)
from mmjax.eval.scenes.boxes import box_iou, box_iou_match
from mmjax.eval.scenes.captions import (
    caption_objects,
    caption_recall_precision,
    objects_caption,
    visible_objects,
)
from mmjax.eval.scenes.colours import (
    PRESENCE_MAX_DISTANCE,
    PRESENCE_MIN_FRACTION,
    colour_presence,
)
from mmjax.eval.scenes.dense import (
    ANGLE_THRESHOLDS,
    NUM_SEMSEG_CLASSES,
    depth_errors,
    normals_angular_error,
    semseg_miou,
)

__all__ = [
    "ANGLE_THRESHOLDS",
    "NUM_SEMSEG_CLASSES",
    "PRESENCE_MAX_DISTANCE",
    "PRESENCE_MIN_FRACTION",
    "box_iou",
    "box_iou_match",
    "caption_objects",
    "caption_recall_precision",
    "colour_presence",
    "depth_errors",
    "frequent_objects_caption_baseline",
    "majority_class_baseline",
    "mean_depth_baseline",
    "mean_image_baseline",
    "mean_normals_baseline",
    "normals_angular_error",
    "objects_caption",
    "semseg_miou",
    "visible_objects",
]
