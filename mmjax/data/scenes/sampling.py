"""Scene parameters (objects, camera, light) drawn from a seeded numpy RNG.

Every scene is a pure function of ``(split, index)``: the seed is
``SeedSequence([crc32(split), index])``, so each split is its own seed stream and no two
(split, index) pairs share one.
"""

import dataclasses
import numbers
import zlib

import numpy as np

from mmjax.data.scenes.constants import (
    COLOR_NAMES,
    MAX_OBJECTS,
    PLACEMENT_GAP,
    PLACEMENT_HALF_EXTENT,
    SHAPE_CLASS_OFFSET,
    SHAPE_NAMES,
    SHAPE_SIZES,
    SPLITS,
)

_PLACEMENT_TRIES = 64


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One object resting on the floor (world is z-up, floor z = 0).

    ``extent`` is the sphere radius, the cube half-edge or the cylinder radius; a cylinder
    is ``2 * extent`` tall. ``yaw`` (radians) rotates a cube about the vertical axis.
    """

    shape: int  # index into SHAPE_NAMES
    size: int  # 0 small, 1 large
    color: int  # index into COLOR_NAMES
    x: float
    y: float
    extent: float
    yaw: float

    @property
    def semseg_class(self) -> int:
        return SHAPE_CLASS_OFFSET + self.shape

    @property
    def height(self) -> float:
        return 2.0 * self.extent

    @property
    def centre(self) -> np.ndarray:
        """Centre of the solid (half its height above the floor)."""
        return np.array([self.x, self.y, self.extent])

    @property
    def bounding_radius(self) -> float:
        """Radius of a sphere around ``centre`` that contains the object."""
        shape = SHAPE_NAMES[self.shape]
        return self.extent * {"sphere": 1.0, "cube": np.sqrt(3.0), "cylinder": np.sqrt(2.0)}[shape]

    @property
    def footprint_radius(self) -> float:
        """Radius of a vertical cylinder around the object that contains it."""
        return self.extent * (np.sqrt(2.0) if SHAPE_NAMES[self.shape] == "cube" else 1.0)


@dataclasses.dataclass(frozen=True)
class Camera:
    """Pinhole camera looking at ``target`` from ``eye``; ``fov`` is the full vertical and
    horizontal field of view (square images), radians."""

    eye: np.ndarray
    target: np.ndarray
    fov: float

    def basis(self):
        """(right, up, forward) unit vectors in world coordinates."""
        fx, fy, fz = (self.target - self.eye) / np.linalg.norm(self.target - self.eye)
        norm = np.hypot(fx, fy)
        rx, ry = fy / norm, -fx / norm  # forward x world-up, normalized (z component 0)
        forward = np.array([fx, fy, fz])
        right = np.array([rx, ry, 0.0])
        up = np.array([ry * fz, -rx * fz, rx * fy - ry * fx])  # right x forward
        return right, up, forward

    def world_to_camera(self, points):
        """World points [..., 3] -> camera coordinates (x right, y up, z toward the camera)."""
        right, up, forward = self.basis()
        rel = np.asarray(points, np.float64) - self.eye
        return np.stack([rel @ right, rel @ up, -(rel @ forward)], axis=-1)


@dataclasses.dataclass(frozen=True)
class Scene:
    split: str
    index: int
    seed: tuple
    objects: tuple  # of SceneObject; instance id k is objects[k - 1]
    camera: Camera
    light_dir: np.ndarray  # unit vector pointing from the scene toward the light

    def params(self) -> np.ndarray:
        """All continuous and discrete parameters as one flat float64 vector."""
        parts = [self.camera.eye, self.camera.target, [self.camera.fov], self.light_dir]
        for o in self.objects:
            parts.append([o.shape, o.size, o.color, o.x, o.y, o.extent, o.yaw])
        return np.concatenate([np.asarray(p, np.float64).ravel() for p in parts])


def validate_index_split(index, split):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {SPLITS}")
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}")


def scene_seed(index: int, split: str) -> tuple:
    return (zlib.crc32(split.encode("utf-8")), int(index))


def _sample_objects(rng):
    n_wanted = int(rng.integers(1, MAX_OBJECTS + 1))
    # Unique (colour, shape) pairs, so every caption mention names one object.
    combos = rng.choice(len(COLOR_NAMES) * len(SHAPE_NAMES), size=n_wanted, replace=False)
    objects = []
    for combo in combos:
        color, shape = divmod(int(combo), len(SHAPE_NAMES))
        size = int(rng.integers(0, 2))
        extent = float(SHAPE_SIZES[shape, size])
        yaw = float(rng.uniform(0.0, np.pi / 2)) if SHAPE_NAMES[shape] == "cube" else 0.0
        foot = extent * (np.sqrt(2.0) if SHAPE_NAMES[shape] == "cube" else 1.0)
        xy = rng.uniform(-PLACEMENT_HALF_EXTENT, PLACEMENT_HALF_EXTENT, size=(_PLACEMENT_TRIES, 2))
        ok = np.ones(_PLACEMENT_TRIES, dtype=bool)
        for other in objects:
            dist = np.hypot(xy[:, 0] - other.x, xy[:, 1] - other.y)
            ok &= dist >= foot + other.footprint_radius + PLACEMENT_GAP
        if not ok.any():
            continue  # no room left: this scene gets fewer objects
        x, y = xy[int(np.argmax(ok))]
        objects.append(SceneObject(shape, size, color, float(x), float(y), extent, yaw))
    return tuple(objects)


def _sample_camera(rng):
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    elevation = np.deg2rad(rng.uniform(28.0, 55.0))
    distance = rng.uniform(8.5, 10.5)
    target = np.array([*rng.uniform(-0.4, 0.4, size=2), 0.3])
    direction = np.array(
        [
            np.cos(elevation) * np.cos(azimuth),
            np.cos(elevation) * np.sin(azimuth),
            np.sin(elevation),
        ]
    )
    fov = np.deg2rad(rng.uniform(38.0, 44.0))
    return Camera(eye=target + distance * direction, target=target, fov=float(fov))


def _sample_light(rng):
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    elevation = np.deg2rad(rng.uniform(35.0, 65.0))
    return np.array(
        [
            np.cos(elevation) * np.cos(azimuth),
            np.cos(elevation) * np.sin(azimuth),
            np.sin(elevation),
        ]
    )


def sample_scene(index: int, split: str = "train") -> Scene:
    """Scene parameters for ``(index, split)`` (independent of the image resolution)."""
    validate_index_split(index, split)
    seed = scene_seed(index, split)
    rng = np.random.default_rng(np.random.SeedSequence(list(seed)))
    objects = _sample_objects(rng)
    camera = _sample_camera(rng)
    light_dir = _sample_light(rng)
    return Scene(split, int(index), seed, objects, camera, light_dir)


def caption_rng(scene: Scene) -> np.random.Generator:
    """A separate stream for caption phrasing (does not perturb the scene parameters)."""
    return np.random.default_rng(np.random.SeedSequence([*scene.seed, 1]))
