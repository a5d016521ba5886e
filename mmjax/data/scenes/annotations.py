"""Boxes and scalar metadata derived from the rendered modalities."""

import numpy as np

from mmjax.data.scenes.constants import FLOOR_CLASS, MAX_OBJECTS, METADATA_FIELDS


def visible_instances(instance, num_objects: int) -> np.ndarray:
    """Sorted instance ids (1..num_objects) with at least one pixel."""
    counts = np.bincount(instance.ravel(), minlength=num_objects + 1)
    return np.flatnonzero(counts[1:]) + 1


def boxes(instance, objects):
    """Tight inclusive (x_min, y_min, x_max, y_max) box per visible instance, padded with -1.

    Returns boxes [MAX_OBJECTS, 4], box_class, box_color, box_instance [MAX_OBJECTS].
    """
    out = np.full((MAX_OBJECTS, 4), -1, dtype=np.int32)
    box_class = np.zeros(MAX_OBJECTS, dtype=np.int32)
    box_color = np.full(MAX_OBJECTS, -1, dtype=np.int32)
    box_instance = np.zeros(MAX_OBJECTS, dtype=np.int32)
    for row, k in enumerate(visible_instances(instance, len(objects))):
        mask = instance == k
        ys = np.flatnonzero(mask.any(axis=1))
        xs = np.flatnonzero(mask.any(axis=0))
        out[row] = (xs[0], ys[0], xs[-1], ys[-1])
        obj = objects[k - 1]
        box_class[row] = obj.semseg_class
        box_color[row] = obj.color
        box_instance[row] = k
    return out, box_class, box_color, box_instance


def colourfulness(rgb) -> float:
    """Hasler & Suesstrunk (2003) colourfulness of an RGB image in [0, 1] (the 0-255 value
    divided by 255): std and mean of rg = R - G and yb = (R + G) / 2 - B."""
    rgb = np.asarray(rgb, np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    sigma = np.sqrt(np.var(rg) + np.var(yb))
    mu = np.sqrt(np.mean(rg) ** 2 + np.mean(yb) ** 2)
    return float(sigma + 0.3 * mu)


def occluded_count(instance, own_hit) -> int:
    """Objects that some pixel's ray hits (the object alone) while the first hit there is
    another object: partly or fully hidden by others. Objects entirely outside the image
    are not counted."""
    count = 0
    for k in range(own_hit.shape[0]):
        own = own_hit[k]
        if np.any(own & (instance != k + 1)):
            count += 1
    return count


def metadata(rgb, depth, semseg, instance, own_hit) -> np.ndarray:
    n_obj = own_hit.shape[0]
    hit = semseg > 0
    values = {
        "object_count": float(len(visible_instances(instance, n_obj))),
        "mean_brightness": float(np.mean(rgb, dtype=np.float64)),
        "colourfulness": colourfulness(rgb),
        "floor_fraction": float(np.mean(semseg == FLOOR_CLASS)),
        "mean_depth": float(np.mean(depth[hit], dtype=np.float64)) if hit.any() else 0.0,
        "occluded_count": float(occluded_count(instance, own_hit)),
    }
    return np.array([values[f] for f in METADATA_FIELDS], dtype=np.float32)
