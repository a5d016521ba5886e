"""ArrayRecord shards of dict-of-arrays records: the on-disk format of scenes, real data
converted by mmjax, and pre-tokenized token arrays.

A record is a `np.savez` archive (no pickling) of named arrays; strings are stored as 0-d
unicode arrays and come back as `str`. Shards are written to a temporary name and renamed
when complete, so a half-written shard is never taken for a good one.

Paths may be local or gs://. ArrayRecord's reader opens gs:// objects itself (its GCS client
reads Application Default Credentials, or CLOUD_STORAGE_EMULATOR_ENDPOINT); its writer only
writes local files, so a gs:// shard is written to a local temporary file and uploaded whole.
"""

import contextlib
import io
import zipfile
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from mmjax.storage import paths as storage

SUFFIX = ".array_record"


def encode_record(example: Mapping[str, object]) -> bytes:
    """dict of arrays / scalars / str -> bytes."""
    arrays = {}
    for key, value in example.items():
        a = np.asarray(value)
        if a.dtype == object:
            raise TypeError(f"encode_record: {key!r} holds Python objects; use arrays or str")
        arrays[key] = a
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_record(data: bytes, where: str = "record") -> dict:
    """bytes -> dict of numpy arrays (0-d unicode arrays become str)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            out = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise ValueError(f"{where}: corrupt mmjax record ({type(e).__name__}: {e})") from e
    return {k: (str(v) if v.dtype.kind == "U" and v.ndim == 0 else v) for k, v in out.items()}


def shard_paths(out_dir: str, prefix: str, num_shards: int) -> list[str]:
    return [
        storage.join(out_dir, f"{prefix}-{i:05d}-of-{num_shards:05d}{SUFFIX}")
        for i in range(num_shards)
    ]


def write_records(
    examples: Iterable[Mapping[str, object]],
    out_dir: str,
    prefix: str,
    num_shards: int = 1,
    overwrite: bool = False,
) -> list[str]:
    """Writes examples round-robin into `num_shards` ArrayRecord files; returns their paths.

    Refuses to replace existing shards unless `overwrite`.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    if num_shards < 1:
        raise ValueError(f"write_records: num_shards must be >= 1, got {num_shards}")
    storage.makedirs(out_dir)
    paths = shard_paths(out_dir, prefix, num_shards)
    existing = [p for p in paths if storage.exists(p)]
    if existing and not overwrite:
        raise FileExistsError(f"write_records: {existing[0]} exists (pass overwrite=True)")
    with contextlib.ExitStack() as staged:  # each shard put in place only if all went well
        tmp = [staged.enter_context(storage.staged_file(p, SUFFIX)) for p in paths]
        writers = [ArrayRecordWriter(t, "group_size:1") for t in tmp]
        try:
            for i, example in enumerate(examples):
                writers[i % num_shards].write(encode_record(example))
        finally:
            for w in writers:
                w.close()
    return paths


def _open(paths: Sequence[str]):
    import grain

    missing = [p for p in paths if not storage.exists(p)]
    if missing:
        raise FileNotFoundError(f"ArrayRecord shard not found: {missing[0]}")
    for p in paths:
        try:  # open each shard alone so that a bad one is named
            grain.sources.ArrayRecordDataSource([p])
        except Exception as e:
            raise ValueError(
                f"{p}: not a readable ArrayRecord file ({type(e).__name__}: {e})"
            ) from e
    return grain.sources.ArrayRecordDataSource(list(paths))


class ArrayRecordSource:
    """Random-access source over mmjax ArrayRecord shards (grain-compatible).

    required_keys: keys every record must hold (e.g. the modalities a model reads); a
    record without one raises a KeyError naming the key, the record and the shard.
    """

    def __init__(self, paths: str | Sequence[str], required_keys: Sequence[str] = ()):
        self.paths = [paths] if isinstance(paths, str) else list(paths)
        if not self.paths:
            raise ValueError("ArrayRecordSource: no shard paths given")
        self._source = _open(self.paths)
        self._lengths = [len(_open([p])) for p in self.paths]
        self.required_keys = tuple(required_keys)

    def __len__(self) -> int:
        return len(self._source)

    def _where(self, index: int) -> str:
        for path, n in zip(self.paths, self._lengths, strict=True):
            if index < n:
                return f"{path} (record {index})"
            index -= n
        return f"record {index}"

    def __getitem__(self, index: int) -> dict:
        try:
            data = self._source[index]
        except Exception as e:
            raise ValueError(f"{self._where(index)}: unreadable ({e})") from e
        record = decode_record(data, self._where(index))
        for key in self.required_keys:
            if key not in record:
                raise KeyError(f"{self._where(index)} has no {key!r}; it holds {sorted(record)}")
        return record

    def __repr__(self) -> str:
        return f"ArrayRecordSource({len(self.paths)} shards, {len(self)} records)"
