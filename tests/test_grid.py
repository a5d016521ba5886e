"""save_image_grid: every tile lands where it should, headers and notes only add space."""

import numpy as np
import pytest
from PIL import Image

from mmjax.eval import save_image_grid

RNG = np.random.default_rng(0)


def _read(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _tiles(rows=2, cols=3, size=4):
    return [
        [RNG.integers(0, 256, (size, size, 3)) / 255.0 for _ in range(cols)] for _ in range(rows)
    ]


def _find(canvas, tile):
    """(y, x) of every exact occurrence of `tile` (uint8) in `canvas`."""
    th, tw = tile.shape[:2]
    hits = []
    for y in range(canvas.shape[0] - th + 1):
        for x in range(canvas.shape[1] - tw + 1):
            if np.array_equal(canvas[y : y + th, x : x + tw], tile):
                hits.append((y, x))
    return hits


def test_tiles_are_placed_in_row_major_order_and_scaled(tmp_path):
    rows = _tiles()
    img = _read(save_image_grid(rows, str(tmp_path / "g.png"), scale=2, pad=2))
    assert img.shape == (2 * (8 + 2) + 2, 3 * (8 + 2) + 2, 3)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            t8 = (np.clip(tile, 0, 1) * 255 + 0.5).astype(np.uint8)
            up = t8.repeat(2, 0).repeat(2, 1)  # nearest-neighbour x2
            y, x = 2 + r * 10, 2 + c * 10
            np.testing.assert_array_equal(img[y : y + 8, x : x + 8], up)


def test_headers_and_notes_shift_tiles_but_keep_them_intact(tmp_path):
    rows = _tiles(rows=2, cols=2, size=6)
    plain = _read(save_image_grid(rows, str(tmp_path / "a.png")))
    noted = _read(
        save_image_grid(
            rows, str(tmp_path / "b.png"), columns=["input", "a much longer header"],
            notes=["a red sphere left of a blue cube", "a green cylinder"],
        )
    )  # fmt: skip
    assert noted.shape[1] == plain.shape[1] and noted.shape[0] > plain.shape[0]
    positions = []
    for row in rows:
        for tile in row:
            t8 = (tile * 255 + 0.5).astype(np.uint8)
            (hit,) = _find(noted, t8)
            positions.append(hit)
    (y00, x00), (y01, x01), (y10, x10), _ = positions
    assert y00 == y01 and x01 - x00 == 6 + 2  # same row, next column
    assert x10 == x00 and y10 - y00 > 6 + 2  # the note sits between the rows
    assert (noted[: y00 - 2] < 128).any()  # header text drawn above the first row
    assert (noted[y00 + 6 : y10] < 128).any()  # note text drawn under the first row


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(columns=["one"]), "1 column headers for 2 columns"),
        (dict(notes=["only one"]), "1 notes for 2 rows"),
        (dict(labels=["a", "b", "c"]), "3 labels for 2 rows"),
    ],
)
def test_mismatched_text_counts_are_named(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        save_image_grid(_tiles(2, 2), str(tmp_path / "x.png"), **kwargs)


def test_bad_images_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"\[H, W\], \[H, W, 1\] or \[H, W, 3\]"):
        save_image_grid([[np.zeros((4, 4, 2))]], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="same size"):
        save_image_grid([[np.zeros((4, 4)), np.zeros((5, 5))]], str(tmp_path / "x.png"))
