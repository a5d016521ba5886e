"""Several aligned views of each example as one source item: the unit pre-tokenization
batches, so all views of an example are encoded together and stored next to each other.

Examples stored at the view size are cropped (`crop_and_flip`); with `resize`, images of any
size are resized to it (`mmjax.data.resize`): the centre crop, or random resized crops."""

import numpy as np

from mmjax.data.augment import crop_and_flip
from mmjax.data.resize import ResizeCrop, crop_resize_example

FIELDS = ("rgb", "depth", "normals", "semseg", "boxes", "box_class", "box_color", "metadata")


def view_params(seed: int, index: int, views: int, full: tuple, size: int, flip_prob=0.5):
    """[(top, left, flip)] of the `views` random crops of example `index` from a [H, W]
    image `full`: a generator seeded by (seed, index), so any example's views can be
    recomputed on their own."""
    rng = np.random.default_rng((seed, index))
    h, w = full
    return [
        (
            int(rng.integers(0, h - size + 1)),
            int(rng.integers(0, w - size + 1)),
            bool(rng.random() < flip_prob),
        )
        for _ in range(views)
    ]


class ViewsSource:
    """Example i of `source` -> its views with every field stacked on a leading [views] axis,
    plus `caption` (str [views], when the examples have one), `crop` ([views, 3] top, left,
    flip), `box` ([views, 4] float left, top, right, bottom in source pixels) and `view`
    indices. Unaugmented: the example itself, which must already be size x size, or with
    `resize` its centre crop; augmented: random crops (resize: random resized crops, with
    `scale` and `ratio` as in `mmjax.data.resize.random_box`)."""

    def __init__(
        self,
        source,
        size,
        views=1,
        augment=False,
        seed=0,
        flip_prob=0.5,
        limit=None,
        resize=False,
        scale=(0.8, 1.0),
        ratio=(0.9, 1.1),
    ):
        if views < 1 or (views > 1 and not augment):
            raise ValueError(f"crops must be >= 1 (more than 1 needs augmentation), got {views}")
        self.source, self.size, self.views, self.augment = source, size, views, augment
        self.seed, self.flip_prob, self.resize = seed, flip_prob, resize
        self.crop = ResizeCrop(size, augment, scale, ratio, flip_prob) if resize else None
        self.num = len(source) if limit is None else min(int(limit), len(source))

    def __len__(self) -> int:
        return self.num

    def _resized(self, ex: dict, i: int, hw: tuple) -> tuple[list, list]:
        rng = np.random.default_rng((self.seed, i))
        params, views = [], []
        for _ in range(self.views):
            box, flip = self.crop.box(*hw, rng)
            views.append(crop_resize_example(ex, box, self.size, flip))
            params.append((box, flip))
        return params, views

    def __getitem__(self, i: int) -> dict:
        ex = self.source[int(i)]
        key = next((k for k in ("rgb", *FIELDS[1:4]) if k in ex), None)
        if key is None:
            raise KeyError(f"example {i} has no image modality; it has {sorted(ex)}")
        hw = tuple(np.shape(ex[key])[:2])
        if self.resize:
            params, views = self._resized(ex, int(i), hw)
        else:
            if (hw != (self.size, self.size)) if not self.augment else min(hw) < self.size:
                need = "at least " if self.augment else ""
                raise ValueError(
                    f"example {i}: images are {hw}, need {need}{self.size}x{self.size}"
                )
            if self.augment:
                crops = view_params(self.seed, int(i), self.views, hw, self.size, self.flip_prob)
                views = [crop_and_flip(ex, t, left, self.size, f) for t, left, f in crops]
            else:
                crops, views = [(0, 0, False)], [ex]
            params = [((left, t, left + self.size, t + self.size), f) for t, left, f in crops]
        out = {k: np.stack([np.asarray(v[k]) for v in views]) for k in FIELDS if k in ex}
        if "caption" in ex:
            out["caption"] = np.array([str(v["caption"]) for v in views])
        out["crop"] = np.array([(round(b[1]), round(b[0]), int(f)) for b, f in params], np.int32)
        out["box"] = np.array([b for b, _ in params], np.float32)
        out["view"] = np.arange(len(views), dtype=np.int32)
        out["example_index"] = np.full(len(views), int(i), np.int32)
        return out
