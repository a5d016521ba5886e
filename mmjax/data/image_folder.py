"""A folder of image files (PNG, JPEG, WebP; local or gs://) as a random-access source.

Every file becomes rgb float32 in [0, 1] at its own size: grayscale is repeated over the
three channels, palette images are expanded, 16-bit images (I;16) are scaled by 1/65535, and
an alpha channel is composited on white (a transparent pixel reads as white paper, as
viewers show it). The EXIF orientation of photographs is applied. Resizing and cropping
happen later, in the Grain pipeline (`mmjax.data.resize`).

Train / validation split: a file is held out for validation when a hash of its path
relative to the folder falls below `validation_fraction` (`mmjax.data.splits`), so the split
never changes with the machine, the listing order or files added later.

A file that cannot be decoded raises a `BadImageError` naming it; with `skip_bad_files` it
is logged, counted in `skipped` and replaced by the next decodable file of the split.
"""

import glob as _glob
import io
import logging
import os

import numpy as np

from mmjax.data.splits import SPLITS, in_split
from mmjax.storage import paths as storage

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
_GLOB_CHARS = frozenset("*?[")
log = logging.getLogger(__name__)


class BadImageError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def list_images(path: str) -> tuple[str, list[str]]:
    """(root, [relative names]) of the images at `path`: a directory, searched recursively
    for IMAGE_EXTENSIONS (other files are ignored), or a glob pattern (every match is taken,
    named relative to the pattern's fixed leading directories). Sorted; a clear error when
    nothing is found."""
    s = os.fspath(path)
    if not s:
        raise ValueError("data.path: empty; give a directory of images or a glob pattern")
    if _GLOB_CHARS & set(s):
        parts = s.split("/")
        fixed = next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))
        root = "/".join(parts[:fixed]) or "/"
        # `**` matches any depth (locally; on gs:// as epath's glob does)
        found = storage.glob(s) if storage.is_remote(s) else sorted(_glob.glob(s, recursive=True))
        matched = [m for m in found if storage.is_remote(m) or not os.path.isdir(m)]
        names = sorted(_relative(m, root) for m in matched)
        if not names:
            raise FileNotFoundError(f"image folder: the pattern {s!r} matches no file")
        return root, names
    if not storage.exists(s):
        raise FileNotFoundError(f"image folder: {s} does not exist")
    if not storage.isdir(s):
        raise NotADirectoryError(f"image folder: {s} is a file; give a directory or a glob")
    names = [n for n in storage.walk_files(s) if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not names:
        raise FileNotFoundError(
            f"image folder: no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files under {s}"
        )
    return s, names


def _relative(match: str, root: str) -> str:
    m, r = os.fspath(match), os.fspath(root).rstrip("/")
    if storage.is_remote(m):
        return m[len(r) :].lstrip("/")
    return os.path.relpath(m, r).replace(os.sep, "/")


def decode_image(data: bytes, where: str = "image") -> np.ndarray:
    """Encoded image bytes -> rgb float32 [H, W, 3] in [0, 1] (see the module docstring for
    each mode); BadImageError naming `where` when they do not decode."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decodes fully: a truncated file fails here, not later
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f"{where}: not a decodable image ({type(e).__name__}: {e})") from e


def _to_rgb(im) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    mode = im.mode
    a = np.asarray(im)
    if mode.startswith("I;16") or mode == "I":
        gray = np.clip(a.astype(np.float32) / 65535.0, 0.0, 1.0)  # 16-bit samples
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        return np.repeat(np.clip(a.astype(np.float32), 0.0, 1.0)[..., None], 3, axis=-1)
    x = a.astype(np.float32) / 255.0
    if mode == "L":
        return np.repeat(x[..., None], 3, axis=-1)
    if mode == "LA":
        rgb, alpha = np.repeat(x[..., :1], 3, axis=-1), x[..., 1:]
        return rgb * alpha + (1.0 - alpha)
    if mode == "RGBA":
        return x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:])
    if mode == "RGB":
        return x
    return np.asarray(im.convert("RGB"), np.float32) / 255.0


class ImageFolderSource:
    """Random-access (Grain) source over the images at `path` (directory or glob, local or
    gs://): item i is {"rgb": float32 [H, W, 3] in [0, 1], "file": relative name}.

    split: "train" or "validation" (the hash split at `validation_fraction`) or "all".
    skip_bad_files: replace undecodable files by the next good one (logged, counted in
    `skipped`) instead of raising.
    """

    def __init__(
        self,
        path: str,
        split: str = "all",
        validation_fraction: float = 0.0,
        skip_bad_files: bool = False,
    ):
        if split not in SPLITS:
            raise ValueError(f"image folder: split must be one of {SPLITS}, got {split!r}")
        self.root, names = list_images(path)
        self.path, self.split, self.skip_bad_files = os.fspath(path), split, skip_bad_files
        self.files = [n for n in names if in_split(n, split, validation_fraction)]
        if not self.files:
            raise ValueError(
                f"image folder {self.path}: none of its {len(names)} images falls in the "
                f"{split!r} split at validation_fraction={validation_fraction}; change "
                f"data.validation_fraction or give validation images in data.eval_path"
            )
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> np.ndarray:
        """The decoded image of file `index` (no skipping)."""
        name = self.files[index]
        full = storage.join(self.root, name)
        return decode_image(storage.read_bytes(full), full)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self.files):
            raise IndexError(f"ImageFolderSource: index {index} outside [0, {len(self.files)})")
        for step in range(len(self.files)):
            i = (index + step) % len(self.files)
            try:
                return {"rgb": self.read(i), "file": self.files[i]}
            except BadImageError as e:
                if not self.skip_bad_files:
                    raise BadImageError(
                        f"{e} (set data.skip_bad_files=True to skip such files)"
                    ) from e
                if self.files[i] not in self.skipped:
                    self.skipped.add(self.files[i])
                    log.warning("skipping %s (%d bad files so far)", e, len(self.skipped))
        raise BadImageError(f"image folder {self.path}: no {self.split!r} file decodes")

    def __repr__(self) -> str:
        return f"ImageFolderSource({self.path!r}, {self.split!r}, {len(self.files)} images)"
