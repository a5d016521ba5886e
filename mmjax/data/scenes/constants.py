"""Vocabulary and fixed numbers of the synthetic scene world (shared by every module)."""

import numpy as np

SPLITS = ("train", "validation", "test")
# The dense maps a scene renders, each with its own image tokenizer.
IMAGE_MODALITIES = ("rgb", "depth", "normals", "semseg")

SHAPE_NAMES = ("sphere", "cube", "cylinder")
SIZE_NAMES = ("small", "large")
SEMSEG_CLASSES = ("background", "floor", "sphere", "cube", "cylinder")
# semseg class of shape s is SHAPE_CLASS_OFFSET + s.
SHAPE_CLASS_OFFSET = 2
BACKGROUND_CLASS = 0
FLOOR_CLASS = 1

COLOR_NAMES = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
COLOR_RGB = np.array(
    [
        [0.50, 0.50, 0.50],
        [0.80, 0.15, 0.13],
        [0.16, 0.30, 0.85],
        [0.18, 0.62, 0.22],
        [0.52, 0.33, 0.16],
        [0.50, 0.20, 0.70],
        [0.15, 0.75, 0.80],
        [0.95, 0.82, 0.15],
    ],
    dtype=np.float32,
)

MAX_OBJECTS = 6

METADATA_FIELDS = (
    "object_count",
    "mean_brightness",
    "colourfulness",
    "floor_fraction",
    "mean_depth",
    "occluded_count",
)

# Geometry (world units; world is z-up, the floor is the plane z = 0).
# Per shape, per size class: sphere radius, cube half-edge, cylinder radius (its height is
# twice its radius).
SHAPE_SIZES = np.array(
    [
        [0.35, 0.70],
        [0.30, 0.60],
        [0.30, 0.60],
    ],
    dtype=np.float64,
)
FLOOR_HALF_EXTENT = 5.0  # the floor is the square |x|, |y| <= this
PLACEMENT_HALF_EXTENT = 2.6  # object centres are sampled in |x|, |y| <= this
PLACEMENT_GAP = 0.1  # minimum clearance between object footprints

# Shading.
AMBIENT = 0.3
DIFFUSE = 0.7
SPECULAR = 0.25
SHININESS = 40.0
FLOOR_RGB = np.array([0.66, 0.64, 0.60], dtype=np.float64)
FLOOR_CHECKER = 0.06  # relative albedo modulation of the floor checker
FLOOR_TILE = 1.0  # checker tile edge (world units)
SKY_TOP_RGB = np.array([0.42, 0.55, 0.75], dtype=np.float64)
SKY_BOTTOM_RGB = np.array([0.72, 0.78, 0.86], dtype=np.float64)
