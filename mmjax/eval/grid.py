"""PNG grids of images with row labels: where people would rather look than read."""

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont


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


def save_image_grid(rows, path: str, labels=None, scale: int = 1, pad: int = 2) -> str:
    """Writes rows of images (values in [0, 1]) as one PNG; returns the path.

    rows: a list of rows, each a list (or array) of equally sized images.
    labels: optional text per row, drawn in a left margin.
    scale: integer nearest-neighbour upscaling, so small images stay legible.
    """
    tiles = [[_to_uint8(im) for im in row] for row in rows]
    if not tiles or not tiles[0]:
        raise ValueError("save_image_grid: need at least one row with one image")
    h, w = tiles[0][0].shape[:2]
    h, w = h * scale, w * scale
    margin = 0 if labels is None else 8 + 7 * max(len(str(t)) for t in labels)
    ncol = max(len(r) for r in tiles)
    canvas = Image.new(
        "RGB", (margin + ncol * (w + pad) + pad, len(tiles) * (h + pad) + pad), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, row in enumerate(tiles):
        y = pad + r * (h + pad)
        if labels is not None:
            draw.text((4, y + h // 2 - 6), str(labels[r]), fill=(0, 0, 0), font=font)
        for c, tile in enumerate(row):
            if tile.shape[0] * scale != h or tile.shape[1] * scale != w:
                raise ValueError("save_image_grid: all images must have the same size")
            im = Image.fromarray(tile).resize((w, h), Image.NEAREST)
            canvas.paste(im, (margin + pad + c * (w + pad), y))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return path
