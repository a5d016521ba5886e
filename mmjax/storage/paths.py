"""Paths that may be local or remote (`gs://bucket/...`), through `etils.epath` (which Orbax
uses too; gs:// goes through gcsfs, or tf.io.gfile where TensorFlow is installed).

Local paths behave as plain files do. On GCS there are no directories, no appends and no
atomic renames, but a single object upload is atomic, so: `write_text`/`write_bytes` write a
temporary name, fsync it, rename it and fsync the folder locally (a crash leaves the old
content or the new one, on disk) and upload the object directly on GCS; `sync_tree` puts a
folder written by another library (Orbax) on disk before something names it; `makedirs` is a
no-op on GCS; `open_append` rewrites the whole object on flush; `staged_file` lets C++ writers
(ArrayRecord) write a local temporary file that is uploaded when it is complete.

Errors a user can act on (no GCS client installed, an unreachable endpoint, a missing bucket,
a permission error) become a `StorageError` that names the path.
"""

import contextlib
import glob as _glob
import json
import os
import shutil
import tempfile
import time

from etils import epath

_GLOB_CHARS = frozenset("*?[")


class StorageError(OSError):
    """A path that cannot be read or written; the message names the path and the reason."""


def is_remote(path) -> bool:
    """True for URLs such as gs://bucket/x (not for local paths or file://)."""
    s = os.fspath(path)
    return "://" in s and not s.startswith("file://")


def as_path(path) -> epath.Path:
    """An `epath.Path`; local paths are made absolute (as the code before them was)."""
    return epath.Path(path) if is_remote(path) else epath.Path(os.path.abspath(path))


def absolute(path) -> str:
    """`path` as an absolute string: remote URLs unchanged, local paths via os.path.abspath
    (which would turn gs://b into ./gs:/b)."""
    s = os.fspath(path)
    return s if is_remote(s) else os.path.abspath(s)


def join(path, *parts) -> str:
    """Joins with '/' for URLs and os.path.join for local paths."""
    s = os.fspath(path)
    if is_remote(s):
        return "/".join([s.rstrip("/"), *(str(p).strip("/") for p in parts)])
    return os.path.join(s, *parts)


def _bucket(path) -> str:
    return os.fspath(path).split("://", 1)[1].split("/", 1)[0]


def _bucket_exists(path) -> bool | None:
    """Whether the bucket of a remote path exists (None when that cannot be told)."""
    try:
        import fsspec

        fs, _ = fsspec.core.url_to_fs(os.fspath(path))
        return bool(fs.exists(_bucket(path)))
    except Exception:
        return None


def _describe(path, e: BaseException) -> str | None:
    """The actionable reason behind a remote error, or None when it is an ordinary one."""
    text = f"{type(e).__name__}: {e}"
    low = text.lower()
    scheme = os.fspath(path).split("://", 1)[0]
    if isinstance(e, ImportError):
        return (
            f"no client for {scheme}:// paths is installed ({e}); pip install gcsfs "
            "(or tensorflow, whose tf.io.gfile epath uses when present)"
        )
    code = getattr(e, "code", None)
    if code in (401, 403) or isinstance(e, PermissionError) or "forbidden" in low:
        return f"permission denied ({text})"
    if "credentials" in low or "defaultcredentials" in low:
        return f"no credentials for the GCS client ({text})"
    if any(w in low for w in ("cannot connect", "connection refused", "connect call failed")):
        endpoint = os.environ.get("STORAGE_EMULATOR_HOST", "the GCS endpoint")
        return f"cannot reach {endpoint} ({text})"
    if "connect" in low or "timeout" in low or "timed out" in low:
        return f"the GCS endpoint did not answer ({text})"
    return None


@contextlib.contextmanager
def storage_errors(path, action: str):
    """Turns what goes wrong with a remote `path` into a StorageError that names it; local
    errors pass through unchanged (as plain files raise them)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        if not is_remote(path):
            raise
        if isinstance(e, FileNotFoundError | FileExistsError | IsADirectoryError):
            if _bucket_exists(path) is False:
                raise StorageError(
                    f"cannot {action} {path}: bucket {_bucket(path)!r} does not exist"
                ) from e
            raise type(e)(f"cannot {action} {path}: {e}") from e
        reason = _describe(path, e)
        if reason is None:
            raise
        raise StorageError(f"cannot {action} {path}: {reason}") from e


def exists(path) -> bool:
    with storage_errors(path, "look up"):
        return as_path(path).exists()


def isdir(path) -> bool:
    with storage_errors(path, "look up"):
        return as_path(path).is_dir()


def listdir(path) -> list[str]:
    """Names in a directory (sorted)."""
    with storage_errors(path, "list"):
        return sorted(p.name for p in as_path(path).iterdir())


def makedirs(path) -> None:
    """mkdir -p locally; nothing on GCS, where directories exist through their objects (and
    gcsfs would create a missing bucket instead of reporting it)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def rmtree(path) -> None:
    """Removes a directory tree, or a file; a missing path is not an error."""
    if not is_remote(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)
        return
    with storage_errors(path, "remove"):
        p = as_path(path)
        if p.is_dir():
            p.rmtree(missing_ok=True)
        elif p.exists():
            p.unlink(missing_ok=True)


def remove(path) -> None:
    """Removes one file; a missing one is not an error."""
    with storage_errors(path, "remove"):
        as_path(path).unlink(missing_ok=True)


def walk_files(root) -> list[str]:
    """Every file under `root`, as sorted '/'-separated paths relative to it."""
    if not is_remote(root):
        out = []
        for folder, _, files in os.walk(root):
            rel = os.path.relpath(folder, root)
            out.extend(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files)
        return sorted(out)
    import fsspec

    with storage_errors(root, "list"):
        fs, base = fsspec.core.url_to_fs(os.fspath(root))
        base = base.rstrip("/")
        return sorted(f[len(base) :].lstrip("/") for f in fs.find(base))


def copy(src, dst) -> None:
    """Copies one file; between two gs:// paths the copy happens on the server."""
    if is_remote(src) and is_remote(dst):
        import fsspec

        with storage_errors(dst, "copy to"):
            fs, _ = fsspec.core.url_to_fs(os.fspath(src))
            fs.copy(os.fspath(src), os.fspath(dst))
        return
    with storage_errors(src, "read"), as_path(src).open("rb") as f:
        data = f.read()
    write_bytes(dst, data)


def read_bytes(path) -> bytes:
    with storage_errors(path, "read"):
        return as_path(path).read_bytes()


def read_text(path) -> str:
    with storage_errors(path, "read"):
        return as_path(path).read_text(encoding="utf-8")


def read_json(path):
    return json.loads(read_text(path))


def write_bytes(path, data: bytes) -> None:
    """Writes a whole file so that readers see the old or the new content, never a part."""
    with storage_errors(path, "write"):
        if is_remote(path):
            as_path(path).write_bytes(data)  # one object upload: atomic on GCS
            return
        tmp = f"{path}.tmp{os.getpid()}"
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(folder)  # the rename itself survives a power cut
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def _fsync_dir(folder) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_tree(path) -> None:
    """fsyncs every file and folder under a local `path` (and its parent, which names it);
    nothing on GCS, where an uploaded object is already durable."""
    if is_remote(path):
        return
    path = os.fspath(path)
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(folder)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, **dump_kwargs) -> None:
    write_text(path, json.dumps(obj, **dump_kwargs))


def open_read(path, mode: str = "rb"):
    """A readable file object (e.g. for PIL or np.load)."""
    with storage_errors(path, "read"):
        return as_path(path).open(mode)


def glob(pattern) -> list[str]:
    """Sorted matches of a file pattern (`*`, `?`, `[...]`; `**` locally only)."""
    s = os.fspath(pattern)
    if not is_remote(s):
        return sorted(_glob.glob(s))
    parts = s.split("/")
    fixed = next((i for i, p in enumerate(parts) if _GLOB_CHARS & set(p)), len(parts))
    if fixed == len(parts):
        return [s] if exists(s) else []
    base, rest = "/".join(parts[:fixed]), "/".join(parts[fixed:])
    with storage_errors(s, "glob"):
        return sorted(str(p) for p in epath.Path(base).glob(rest))


@contextlib.contextmanager
def staged_file(path, suffix: str = ""):
    """Yields a local file name to write `path` through; it is put in place only when the
    block ends without error. Locally: `path.tmp`, renamed. Remote: a local temporary file,
    uploaded as one object (for writers that only speak local files, like ArrayRecord's)."""
    if not is_remote(path):
        tmp = f"{path}.tmp"
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return
    fd, tmp = tempfile.mkstemp(prefix="mmjax-upload-", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        upload(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def upload(local: str, path) -> None:
    """Copies a local file to `path` (local or remote), whole."""
    with storage_errors(path, "write"), open(local, "rb") as src:
        if not is_remote(path):
            shutil.copyfile(local, path)
            return
        with as_path(path).open("wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)


class AppendFile:
    """A file opened for appending. Locally: a plain append-mode file. Remote objects cannot
    be appended to, so the content (what the object held at open, then every write) is kept
    in memory and the whole object rewritten on `flush` (at most every `min_interval`
    seconds unless forced) and on `close`; a reader sees whole flushes only."""

    def __init__(self, path, binary: bool = False, min_interval: float = 30.0):
        self.path, self.binary, self.min_interval = os.fspath(path), binary, min_interval
        self.remote = is_remote(self.path)
        self._file = None
        if not self.remote:
            mode = "ab" if binary else "a"
            self._file = open(self.path, mode, **({} if binary else {"encoding": "utf-8"}))  # noqa: SIM115
            return
        self._chunks = [read_bytes(self.path)] if exists(self.path) else []
        self._dirty, self._last, self.closed = False, None, False  # None: never flushed

    def write(self, data) -> None:
        if self._file is not None:
            self._file.write(data)
            return
        if self.closed:
            raise ValueError(f"{self.path} is closed")
        self._chunks.append(data if self.binary else data.encode("utf-8"))
        self._dirty = True

    @property
    def size(self) -> int:
        """Bytes held for a remote object (0 for a local file, which is not held)."""
        return 0 if self._file is not None else sum(len(c) for c in self._chunks)

    def flush(self, force: bool = False) -> None:
        if self._file is not None:
            self._file.flush()
            return
        due = self._last is None or time.monotonic() - self._last >= self.min_interval
        if self._dirty and (force or due):
            data = b"".join(self._chunks)
            self._chunks = [data]
            write_bytes(self.path, data)
            self._dirty, self._last = False, time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            return
        if not self.closed:
            self.flush(force=True)
            self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_append(path, binary: bool = False, min_interval: float = 30.0) -> AppendFile:
    """An `AppendFile` for `path` (created if missing)."""
    return AppendFile(path, binary=binary, min_interval=min_interval)
