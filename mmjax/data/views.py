"""Several aligned views of each example as one source item: the unit pre-tokenization
batches, so all views of an example are encoded together and stored next to each other."""

import numpy as np

from mmjax.data.augment import crop_and_flip

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
    plus `caption` (str [views]), `crop` ([views, 3] top, left, flip) and `view` indices.
    Unaugmented: the example itself, which must already be size x size."""

    def __init__(self, source, size, views=1, augment=False, seed=0, flip_prob=0.5, limit=None):
        if views < 1 or (views > 1 and not augment):
            raise ValueError(f"crops must be >= 1 (more than 1 needs augmentation), got {views}")
        self.source, self.size, self.views, self.augment = source, size, views, augment
        self.seed, self.flip_prob = seed, flip_prob
        self.num = len(source) if limit is None else min(int(limit), len(source))

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, i: int) -> dict:
        ex = self.source[int(i)]
        hw = tuple(np.shape(ex["rgb"])[:2])
        if (hw != (self.size, self.size)) if not self.augment else min(hw) < self.size:
            need = "at least " if self.augment else ""
            raise ValueError(f"example {i}: images are {hw}, need {need}{self.size}x{self.size}")
        if self.augment:
            params = view_params(self.seed, int(i), self.views, hw, self.size, self.flip_prob)
            views = [crop_and_flip(ex, t, left, self.size, f) for t, left, f in params]
        else:
            params, views = [(0, 0, False)], [ex]
        out = {k: np.stack([np.asarray(v[k]) for v in views]) for k in FIELDS if k in ex}
        out["caption"] = np.array([str(v["caption"]) for v in views])
        out["crop"] = np.array(params, np.int32)
        out["view"] = np.arange(len(views), dtype=np.int32)
        out["example_index"] = np.full(len(views), int(i), np.int32)
        return out
