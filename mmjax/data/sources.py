"""Random-access sources: the embedded scenes, image folders, mmjax ArrayRecord shards, TFDS
datasets; and the parts of each that training and validation read.

`build_source(config, part)`: part "train" is what training reads, "validation" the held-out
images evaluation reads (`build_validation_source(config)`), "all" everything the config
names. Validation data: scenes -> the split `eval_split` (default "validation"); an image
folder or ArrayRecord files -> the files at `eval_path` if given, else the examples whose key
(relative file name, record index) hashes below `validation_fraction` (`mmjax.data.splits`),
which training then never sees; TFDS -> the split `eval_split` if given, else the same
hash split of `split`. Images of any size are resized in the pipeline (`mmjax.data.resize`:
`center_crop_resize(image, resolution)` is the evaluation policy;
`mmjax.data.pipeline.eval_dataset(config, part)` gives a part's examples with it applied).
"""

from collections.abc import Mapping, Sequence

import numpy as np

from mmjax.data.image_folder import ImageFolderSource
from mmjax.data.records import ArrayRecordSource
from mmjax.data.splits import SubsetSource, split_indices

SOURCES = ("scenes", "image_folder", "array_record", "tfds")
PARTS = ("train", "validation", "all")


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
    "text"}); `image_key` names the image feature read as "rgb" (grayscale repeated to three
    channels, alpha composited on white). uint8 images become float32 in [0, 1] (uint16:
    / 65535), bytes become str.
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        data_dir: str | None = None,
        keys: Mapping[str, str] | None = None,
        image_key: str | None = None,
    ):
        import tensorflow_datasets as tfds

        self.name, self.split = name, split
        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir)
        except Exception as e:  # unknown name, missing split, not prepared
            raise ValueError(
                f"TFDS dataset {name!r} split {split!r} (data_dir {data_dir or 'default'}) "
                f"cannot be opened as a data source: {type(e).__name__}: {e}"
            ) from e
        self.keys = dict(keys) if keys else {}
        self.image_key = image_key or None
        if self.image_key:
            self.keys["rgb"] = self.image_key

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        raw = self._source[int(index)]
        pairs = self.keys.items() if self.keys else ((k, k) for k in raw)
        out = {}
        for ours, theirs in pairs:
            if theirs not in raw:
                raise KeyError(
                    f"TFDS {self.name}/{self.split} record {index} has no feature {theirs!r} "
                    f"(for {ours!r}); it has {sorted(raw)}"
                )
            value = _convert(raw[theirs])
            out[ours] = _as_rgb(value, f"TFDS feature {theirs!r}") if ours == "rgb" else value
        return out

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, {self.split!r}, {len(self)} examples)"


def _convert(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    a = np.asarray(value)
    if a.dtype == np.uint8 and a.ndim == 3:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16 and a.ndim == 3:
        return a.astype(np.float32) / 65535.0
    return a


def _as_rgb(a, what: str) -> np.ndarray:
    """[H, W, 1|2|3|4] float in [0, 1] -> [H, W, 3]: gray repeated, alpha on white."""
    a = np.asarray(a, np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{what}: expected an image [H, W, 1-4], got shape {a.shape}")
    if a.shape[-1] in (2, 4):
        a = a[..., :-1] * a[..., -1:] + (1.0 - a[..., -1:])
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def build_source(config, part: str = "train"):
    """A source from a data config: `source` is one of SOURCES, `part` one of PARTS (see the
    module docstring).

    scenes: split, resolution, num_examples, eval_split; image_folder: path (directory or
    glob), eval_path, validation_fraction, skip_bad_files; array_record: paths (files or glob
    patterns), eval_path, validation_fraction, required_keys; tfds: tfds_name, split,
    eval_split, data_dir ("" or None: the TFDS default), image_key (the image feature read as
    rgb), keys (mmjax name -> TFDS feature; empty: the TFDS names), validation_fraction.
    """
    name = config.get("source", None)
    if part not in PARTS:
        raise ValueError(f"build_source: part must be one of {PARTS}, got {part!r}")
    fraction = float(config.get("validation_fraction", 0.0) or 0.0)
    eval_path = config.get("eval_path", "") or ""
    eval_split = config.get("eval_split", "") or ""
    if name == "scenes":
        split = (eval_split or "validation") if part == "validation" else config.get("split")
        return ScenesSource(
            split or "train", config.get("resolution", 64), config.get("num_examples", 10000)
        )
    if name == "image_folder":
        path = config.get("path", "") or ""
        if not path:
            raise ValueError("data.source=image_folder needs data.path (a directory or a glob)")
        skip = bool(config.get("skip_bad_files", False))
        if part == "validation" and eval_path:
            return ImageFolderSource(eval_path, "all", 0.0, skip)
        holdout = part if fraction > 0 and not (part == "train" and eval_path) else "all"
        if part == "validation" and holdout == "all":
            raise ValueError(_NO_VALIDATION.format(name=name, where="data.eval_path"))
        return ImageFolderSource(path, holdout, fraction, skip)
    if name == "array_record":
        paths = config.get("paths", None)
        keys = config.get("required_keys", None) or ()
        if not paths:
            raise ValueError("data.source=array_record needs data.paths (files or glob patterns)")
        if part == "validation" and eval_path:
            return ArrayRecordSource(_expand(eval_path), keys)
        return _held_out(ArrayRecordSource(_expand(paths), keys), part, fraction, eval_path, name)
    if name == "tfds":
        tfds_name = config.get("tfds_name", None)
        if not tfds_name:
            raise ValueError("data.source=tfds needs data.tfds_name (a TFDS dataset name)")
        args = (
            config.get("data_dir", None) or None,
            config.get("keys", None) or None,
            config.get("image_key", None) or None,
        )
        split = config.get("split", "train") or "train"
        if part == "validation" and eval_split:
            return TfdsSource(tfds_name, eval_split, *args)
        return _held_out(TfdsSource(tfds_name, split, *args), part, fraction, eval_split, name)
    raise ValueError(f"data.source must be one of {SOURCES}, got {name!r}")


def build_validation_source(config):
    """The validation images of the data config (what evaluation reads)."""
    return build_source(config, "validation")


_NO_VALIDATION = (
    "data.source={name}: no validation data: set {where}, or data.validation_fraction > 0 "
    "to hold out part of the training data"
)


def _held_out(source, part: str, fraction: float, explicit: str, name: str):
    """`source` restricted to `part` of its index hash split (none when the validation
    data is given explicitly, or for part "all")."""
    if part == "all" or (part == "train" and (explicit or fraction == 0)):
        return source
    if fraction == 0:
        where = "data.eval_split" if name == "tfds" else "data.eval_path"
        raise ValueError(_NO_VALIDATION.format(name=name, where=where))
    return SubsetSource(source, split_indices(len(source), part, fraction), f"data.source={name}")


def describe_source(config) -> dict:
    """What a model trained on this data config was trained on: source, where the data
    lives, resolution and the resize policy (recorded in bundles)."""
    from mmjax.data.resize import resolve_policy

    name = config.get("source", None)
    fields = {
        "scenes": ("split", "eval_split", "num_examples"),
        "image_folder": ("path", "eval_path", "validation_fraction"),
        "array_record": ("paths", "eval_path", "validation_fraction"),
        "tfds": ("tfds_name", "split", "eval_split", "image_key", "validation_fraction"),
    }.get(name, ())
    out = {"source": name}
    for key in fields:
        value = config.get(key, None)
        out[key] = list(value) if isinstance(value, tuple | list) else value
    if out.get("eval_path") or out.get("eval_split"):
        out.pop("validation_fraction", None)  # validation data given: no hold-out
    policy = resolve_policy(config)
    out.update(resolution=int(config.get("resolution", 0) or 0), resize=policy)
    if policy == "random_resized_crop":
        out["train_crop"] = dict(
            scale=[float(v) for v in config.get("crop_scale", (0.8, 1.0))],
            ratio=[float(v) for v in config.get("crop_ratio", (0.9, 1.1))],
            flip_prob=float(config.get("flip_prob", 0.5)),
        )
    if policy != "none":
        out["eval_crop"] = "shorter side resized to resolution (antialiased bicubic), centre crop"
    return out


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
