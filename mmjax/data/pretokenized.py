"""Reading pre-tokenized data (what `python -m mmjax.pretokenize` writes), the 4M
trainer's input. Imports no model.

Layout of an output directory OUT (every modality holds the same number of records, and
record i of every modality belongs to the same example view):

    OUT/manifest.json                      written last; "complete": true is its last key
    OUT/text_tokenizer.json                the text tokenizer of the sequence modalities
    OUT/tok_<m>/shard-XXXXX-of-YYYYY.array_record   {"tokens": int32 [h, w]} per image
                                           tokenizer (m = rgb, depth, normals, semseg);
                                           [h, w, depth] for a residual (RVQ) one, whose
                                           manifest entry has "depth"
    OUT/rgb/...                            {"tokens": uint8 [R, R, 3]} the pixels 4M reads
    OUT/caption/..., OUT/boxes/..., OUT/metadata/...   {"tokens": int32 [n]}, no EOS
    OUT/views/...                          {"example_index", "view", "crop": int32
                                           [top, left, flip], "box": float32 [left, top,
                                           right, bottom] of the source image}: where each
                                           record came from

Image-only sources (image folders, TFDS images) have no caption, boxes or metadata
modalities; their text tokenizer holds special tokens only (4M's masking reads its ids).

Shards are contiguous: record r lives in shard r * S // N, so the reader's index is the
writer's order (example-major, view-minor).
"""

import numpy as np

from mmjax.data.records import ArrayRecordSource, shard_paths
from mmjax.storage import paths

FORMAT = "mmjax-pretokenized-v1"
MANIFEST = "manifest.json"
SHARD_PREFIX = "shard"
VIEWS = "views"


def load_manifest(out_dir: str) -> dict:
    """The manifest of a finished output (local or gs://); clear errors for anything else."""
    path = paths.join(out_dir, MANIFEST)
    if not paths.isdir(out_dir):
        raise FileNotFoundError(f"pre-tokenized data: {out_dir} is not a directory")
    if not paths.exists(path):
        raise FileNotFoundError(
            f"pre-tokenized data: {path} not found; {out_dir} is not a finished "
            f"pre-tokenization output (interrupted run, or the wrong directory?)"
        )
    try:
        manifest = paths.read_json(path)
    except paths.StorageError:
        raise
    except (OSError, ValueError) as e:
        raise ValueError(f"pre-tokenized data: {path} is unreadable ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"pre-tokenized data: {path} has format {got!r}, expected {FORMAT!r}")
    if manifest.get("complete") is not True:
        raise ValueError(f"pre-tokenized data: {path} does not mark the output complete")
    # A moved output still finds its own copy of the text tokenizer.
    local = paths.join(paths.absolute(out_dir), "text_tokenizer.json")
    stored = manifest.get("text_tokenizer") or ""
    if (not stored or not paths.exists(stored)) and paths.exists(local):
        manifest["text_tokenizer"] = local
        for m in manifest.get("modalities", {}).values():
            if m.get("kind") == "sequence":
                m["tokenizer"] = local
    return manifest


def modality_paths(out_dir: str, name: str, num_shards: int) -> list[str]:
    return shard_paths(paths.join(out_dir, name), SHARD_PREFIX, num_shards)


class PretokenizedSource:
    """Random-access (Grain) source over a pre-tokenized output: item i is a dict
    {modality name: array} (4M names: tok_rgb, ..., rgb, caption, boxes, metadata).

    modalities: the names to read (default: all in the manifest); pixels: "float32" gives
    rgb as float32 in [0, 1] (what 4M's pixel embedding reads), "uint8" as stored.
    The manifest, every shard and every record count are checked up front.
    """

    def __init__(self, out_dir: str, modalities=None, *, pixels: str = "float32"):
        self.out_dir = paths.absolute(out_dir)
        self.manifest = load_manifest(self.out_dir)
        available = self.manifest["modalities"]
        names = list(available) if modalities is None else list(modalities)
        unknown = [n for n in names if n not in available]
        if unknown:
            raise KeyError(
                f"pre-tokenized data {self.out_dir} has no modality {unknown[0]!r}; "
                f"it has {sorted(available)}"
            )
        if pixels not in ("float32", "uint8"):
            raise ValueError(f"pixels must be 'float32' or 'uint8', got {pixels!r}")
        self.modalities, self.pixels = names, pixels
        self._num = int(self.manifest["num_examples"])
        self._sources = {n: self._open(n) for n in names}
        self._views = None  # opened on the first `view` call

    def _open(self, name: str) -> ArrayRecordSource:
        shards = modality_paths(self.out_dir, name, int(self.manifest["num_shards"]))
        missing = [p for p in shards if not paths.exists(p)]
        if missing:
            raise FileNotFoundError(
                f"pre-tokenized data: modality {name!r} is missing {missing[0]} "
                f"(the manifest lists {self.manifest['num_shards']} shard(s))"
            )
        source = ArrayRecordSource(shards, required_keys=() if name == VIEWS else ("tokens",))
        if len(source) != self._num:
            raise ValueError(
                f"pre-tokenized data: {paths.join(self.out_dir, name)} holds {len(source)} "
                f"records, but the manifest says {self._num} (every modality must be aligned)"
            )
        return source

    def __len__(self) -> int:
        return self._num

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self._num:
            raise IndexError(f"PretokenizedSource: index {index} outside [0, {self._num})")
        out = {}
        for name, source in self._sources.items():
            value = source[index]["tokens"]
            if self.manifest["modalities"][name]["kind"] == "pixels" and self.pixels == "float32":
                value = value.astype(np.float32) / 255.0
            out[name] = value
        return out

    def view(self, index: int) -> dict:
        """Where record `index` came from: example_index, view, crop [top, left, flip]."""
        if self._views is None:
            self._views = self._open(VIEWS)
        return self._views[int(index)]

    def __repr__(self) -> str:
        return f"PretokenizedSource({self.out_dir!r}, {self._num} records, {self.modalities})"
