"""PNG grids of images with row labels, column headers and notes: where people would rather
look than read."""

import io
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmjax.storage import paths


def _to_uint8(image) -> np.ndarray:
    a = np.asarray(image, np.float64)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(
            f"save_image_grid: images must be [H, W], [H, W, 1] or [H, W, 3], got {a.shape}"
        )
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _wrap(text: str, width_px: int, char_px: int = 6) -> list[str]:
    per_line = max(width_px // char_px, 8)
    lines, line = [], ""
    for word in str(text).split():
        if line and len(line) + 1 + len(word) > per_line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def save_image_grid(
    rows, path: str, labels=None, scale: int = 1, pad: int = 2, columns=None, notes=None
) -> str:
    """Writes rows of images (values in [0, 1]) as one PNG; returns the path.

    rows: a list of rows, each a list (or array) of equally sized images.
    labels: optional text per row, drawn in a left margin.
    columns: optional header text per column, drawn above the first row.
    notes: optional text per row (e.g. a caption), wrapped and drawn under the row.
    scale: integer nearest-neighbour upscaling, so small images stay legible.
    """
    tiles = [[_to_uint8(im) for im in row] for row in rows]
    if not tiles or not tiles[0]:
        raise ValueError("save_image_grid: need at least one row with one image")
    for name, texts in (("labels", labels), ("notes", notes)):
        if texts is not None and len(texts) != len(tiles):
            raise ValueError(f"save_image_grid: {len(texts)} {name} for {len(tiles)} rows")
    h, w = tiles[0][0].shape[:2]
    h, w = h * scale, w * scale
    ncol = max(len(r) for r in tiles)
    if columns is not None and len(columns) != ncol:
        raise ValueError(f"save_image_grid: {len(columns)} column headers for {ncol} columns")
    margin = 0 if labels is None else 8 + 7 * max(len(str(t)) for t in labels)
    width = margin + ncol * (w + pad) + pad
    line_h = 12
    header = [_wrap(c, w) for c in columns] if columns is not None else []
    top = line_h * max((len(c) for c in header), default=0) + (pad if header else 0)
    below = [_wrap(t, width - 2 * pad) for t in notes] if notes is not None else [[]] * len(tiles)
    heights = [h + pad + line_h * len(b) for b in below]
    canvas = Image.new("RGB", (width, top + sum(heights) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for c, lines in enumerate(header):
        for k, line in enumerate(lines):
            draw.text((margin + pad + c * (w + pad), pad + k * line_h), line, fill=0, font=font)
    y = top + pad
    for r, row in enumerate(tiles):
        if labels is not None:
            draw.text((4, y + h // 2 - 6), str(labels[r]), fill=(0, 0, 0), font=font)
        for c, tile in enumerate(row):
            if tile.shape[0] * scale != h or tile.shape[1] * scale != w:
                raise ValueError("save_image_grid: all images must have the same size")
            im = Image.fromarray(tile).resize((w, h), Image.NEAREST)
            canvas.paste(im, (margin + pad + c * (w + pad), y))
        for k, line in enumerate(below[r]):
            draw.text((margin + pad, y + h + 1 + k * line_h), line, fill=(0, 0, 0), font=font)
        y += heights[r]
    paths.makedirs(os.path.dirname(paths.absolute(path)))
    buf = io.BytesIO()
    canvas.save(buf, format=Image.registered_extensions().get(os.path.splitext(path)[1], "PNG"))
    paths.write_bytes(path, buf.getvalue())  # local or gs://
    return path
