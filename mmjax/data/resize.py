"""Resize-and-crop of images of any size to R x R, applied in the Grain pipeline.

Evaluation, validation and pre-tokenization (`center_crop_resize`): the shorter side is
resized to R with an antialiased bicubic filter, then the centre R x R is cut out. Training
(`ResizeCrop(train=True)`): a random resized crop, then a horizontal flip with probability
`flip_prob`. The crop's area is a fraction in `scale` of the image's largest square
(side = the shorter side), its aspect ratio (width / height) log-uniform in `ratio`, its
position uniform; it is resized to R x R. Both read the source pixels once (PIL's resize of a
box, with the filter support of the full-image resize), so the centre crop equals a resize of
the whole image followed by a crop.

rgb is filtered bicubically and clipped to [0, 1]; depth, normals, semseg and instance maps
use the nearest sample, since averaging across an object's edge would invent depths,
directions and classes that are in neither object. Boxes and captions follow the crop and
flip (`mmjax.data.augment.follow_derived`).
"""

import numpy as np

from mmjax.data.augment import IMAGE_KEYS, follow_derived

RESIZE_POLICIES = ("auto", "random_resized_crop", "center_crop", "none")
# Sources whose images come at any size: "auto" resizes them; scenes and ArrayRecord
# examples are used at the size they are stored at.
ANY_SIZE_SOURCES = ("image_folder", "tfds")


def resolve_policy(config) -> str:
    """The data config's `resize` policy, with "auto" made concrete for its source."""
    policy = config.get("resize", "auto") or "auto"
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"data.resize must be one of {RESIZE_POLICIES}, got {policy!r}")
    if policy == "auto":
        return "random_resized_crop" if config.get("source") in ANY_SIZE_SOURCES else "none"
    return policy


def center_box(h: int, w: int, resolution: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in source pixels of the R x R centre crop taken after the
    shorter side is resized to R (the longer side to round(long * R / short))."""
    if h <= w:
        new_w = max(round(w * resolution / h), resolution)
        sx = w / new_w
        left = (new_w - resolution) // 2 * sx
        return (left, 0.0, left + resolution * sx, float(h))
    new_h = max(round(h * resolution / w), resolution)
    sy = h / new_h
    top = (new_h - resolution) // 2 * sy
    return (0.0, top, float(w), top + resolution * sy)


def random_box(rng: np.random.Generator, h: int, w: int, scale, ratio):
    """(left, top, right, bottom) of a random crop: area in `scale` x side**2 (side = the
    shorter side), aspect w/h log-uniform in `ratio`, uniform position; integer pixels."""
    lo, hi = float(scale[0]), float(scale[1])
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"data.crop_scale must satisfy 0 < min <= max <= 1, got {scale}")
    if not 0.0 < float(ratio[0]) <= float(ratio[1]):
        raise ValueError(f"data.crop_ratio must satisfy 0 < min <= max, got {ratio}")
    area = rng.uniform(lo, hi) * min(h, w) ** 2
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw = int(min(w, max(1, round(np.sqrt(area * aspect)))))
    ch = int(min(h, max(1, round(np.sqrt(area / aspect)))))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return (float(left), float(top), float(left + cw), float(top + ch))


def resize_box(image, box, size: int, nearest: bool = False) -> np.ndarray:
    """The `box` (left, top, right, bottom) of an [H, W] or [H, W, C] array, resized to
    size x size: antialiased bicubic (float32), or the nearest sample (dtype kept)."""
    from PIL import Image

    a = np.asarray(image)
    planes = a[..., None] if a.ndim == 2 else a
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    out = np.empty((size, size, planes.shape[-1]), np.float32)
    for c in range(planes.shape[-1]):
        plane = Image.fromarray(np.ascontiguousarray(planes[..., c], np.float32))
        out[..., c] = np.asarray(plane.resize((size, size), resample, box=box))
    out = out.astype(a.dtype) if nearest else out
    return out[..., 0] if a.ndim == 2 else out


def center_crop_resize(image, resolution: int) -> np.ndarray:
    """An rgb image [H, W, 3] of any size -> float32 [R, R, 3] in [0, 1]: the shorter side
    resized to R (antialiased bicubic), then the centre R x R. The evaluation policy."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"center_crop_resize: expected an rgb image [H, W, 3], got {a.shape}")
    h, w = a.shape[:2]
    return np.clip(resize_box(a, center_box(h, w, resolution), resolution), 0.0, 1.0)


def crop_resize_example(example: dict, box, resolution: int, flip: bool) -> dict:
    """Every image modality of `example` cut to `box`, resized to R x R, optionally mirrored
    (normals' x changes sign); boxes and captions follow."""
    out = dict(example)
    for key in IMAGE_KEYS:
        if key not in out:
            continue
        a = resize_box(out[key], box, resolution, nearest=key != "rgb")
        if key == "rgb":
            a = np.clip(a, 0.0, 1.0)
        if flip:
            a = a[:, ::-1]
            if key == "normals":
                a = a * np.array([-1.0, 1.0, 1.0], a.dtype)
        out[key] = np.ascontiguousarray(a)
    return follow_derived(example, out, flip)


def _size(example: dict) -> tuple[int, int]:
    key = next((k for k in IMAGE_KEYS if k in example), None)
    if key is None:
        raise KeyError(f"resize: the example has no image modality {IMAGE_KEYS}: {sorted(example)}")
    return tuple(np.shape(example[key])[:2])


class ResizeCrop:
    """The pipeline's resize-and-crop: `train` -> a random resized crop (the centre crop
    with `center`) and a flip drawn from the example's generator (a grain random map:
    deterministic given the seed and the example's position); otherwise the centre crop,
    unflipped (a plain map: `transform(example)`)."""

    def __init__(
        self,
        resolution: int,
        train: bool = True,
        scale=(0.8, 1.0),
        ratio=(0.9, 1.1),
        flip_prob: float = 0.5,
        center: bool = False,
    ):
        if resolution < 1:
            raise ValueError(f"data.resolution must be >= 1, got {resolution}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"data.flip_prob must lie in [0, 1], got {flip_prob}")
        random_box(np.random.default_rng(0), 8, 8, scale, ratio)  # validates scale and ratio
        self.resolution, self.train, self.center = int(resolution), bool(train), bool(center)
        self.scale, self.ratio, self.flip_prob = tuple(scale), tuple(ratio), float(flip_prob)

    def box(self, h: int, w: int, rng: np.random.Generator | None):
        """(box, flip) for an h x w example."""
        if not self.train:
            return center_box(h, w, self.resolution), False
        if self.center:
            box = center_box(h, w, self.resolution)
        else:
            box = random_box(rng, h, w, self.scale, self.ratio)
        return box, bool(rng.random() < self.flip_prob)

    def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
        if self.train and rng is None:
            raise ValueError("ResizeCrop(train=True) needs the example's random generator")
        h, w = _size(example)
        box, flip = self.box(h, w, rng)
        return crop_resize_example(example, box, self.resolution, flip)
