"""Random-access sources: the embedded scenes, mmjax ArrayRecord shards, TFDS datasets."""

from collections.abc import Mapping, Sequence

import numpy as np

from mmjax.data.records import ArrayRecordSource

SOURCES = ("scenes", "array_record", "tfds")


class ScenesSource:
    """The embedded synthetic scenes as a grain random-access source (no files).

    Scene `i` of `split` is `mmjax.data.scenes.generate(i, split, resolution)`, always the
    same; `num_examples` fixes the length (the generator itself is unbounded).
    """

    def __init__(self, split: str = "train", resolution: int = 64, num_examples: int = 10000):
        from mmjax.data import scenes

        if num_examples < 1:
            raise ValueError(f"ScenesSource: num_examples must be >= 1, got {num_examples}")
        scenes.generate(0, split, resolution)  # validates split and resolution early
        self.split, self.resolution, self.num_examples = split, resolution, num_examples
        self._generate = scenes.generate

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"ScenesSource: index {index} outside [0, {self.num_examples})")
        return self._generate(int(index), self.split, self.resolution)

    def __repr__(self) -> str:
        return f"ScenesSource({self.split!r}, {self.resolution}px, {self.num_examples})"


class TfdsSource:
    """A `tfds.data_source(...)` with its features renamed to mmjax modality names.

    `keys` maps mmjax names to TFDS feature names (e.g. {"rgb": "image", "caption":
    "text"}); uint8 images become float32 in [0, 1], bytes become str.
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        data_dir: str | None = None,
        keys: Mapping[str, str] | None = None,
    ):
        import tensorflow_datasets as tfds

        self._source = tfds.data_source(name, split=split, data_dir=data_dir)
        self.keys = dict(keys) if keys else None

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        raw = self._source[int(index)]
        pairs = self.keys.items() if self.keys else ((k, k) for k in raw)
        out = {}
        for ours, theirs in pairs:
            if theirs not in raw:
                raise KeyError(
                    f"TFDS record {index} has no feature {theirs!r} (for {ours!r}); "
                    f"it has {sorted(raw)}"
                )
            out[ours] = _convert(raw[theirs])
        return out


def _convert(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    a = np.asarray(value)
    if a.dtype == np.uint8 and a.ndim == 3:
        return a.astype(np.float32) / 255.0
    return a


def build_source(config):
    """A source from a data config: `source` is one of SOURCES.

    scenes: split, resolution, num_examples; array_record: paths (files or glob patterns),
    required_keys; tfds: tfds_name, split, data_dir ("" or None: the TFDS default), keys
    (mmjax name -> TFDS feature; empty or None: the TFDS names).
    """
    name = config.get("source", None)
    if name == "scenes":
        return ScenesSource(
            config.get("split", "train"),
            config.get("resolution", 64),
            config.get("num_examples", 10000),
        )
    if name == "array_record":
        paths = config.get("paths", None)
        if not paths:
            raise ValueError("data.source=array_record needs data.paths (files or glob patterns)")
        return ArrayRecordSource(_expand(paths), config.get("required_keys", None) or ())
    if name == "tfds":
        tfds_name = config.get("tfds_name", None)
        if not tfds_name:
            raise ValueError("data.source=tfds needs data.tfds_name (a TFDS dataset name)")
        return TfdsSource(
            tfds_name,
            config.get("split", "train"),
            config.get("data_dir", None) or None,
            config.get("keys", None) or None,
        )
    raise ValueError(f"data.source must be one of {SOURCES}, got {name!r}")


def _expand(paths: str | Sequence[str]) -> list[str]:
    from mmjax.storage.paths import glob

    patterns = [paths] if isinstance(paths, str) else list(paths)
    out = []
    for pattern in patterns:
        matched = glob(pattern)  # local or gs://
        if not matched:
            raise FileNotFoundError(f"data.paths: nothing matches {pattern!r}")
        out.extend(matched)
    return out
