"""Bicubic resizing of position tables as ml-4m's ViTs do it at run time
(`F.interpolate(pos_emb, size, mode="bicubic", align_corners=False)`), so a tokenizer whose
tables were stored at one grid (e.g. 28 x 28 for 448 px) can be converted for another
(14 x 14 for 224 px) with the positions ml-4m would use there.

Torch's kernel: source coordinate s = (i + 0.5) * in / out - 0.5, taps at floor(s) - 1 ...
floor(s) + 2 clamped to the border, Keys' cubic convolution with A = -0.75; separable.
"""

import numpy as np

_A = -0.75


def _weights(t: np.ndarray) -> np.ndarray:
    """[N] fractional offsets -> [N, 4] cubic-convolution weights of the four taps."""

    def near(x):  # |x| <= 1
        return ((_A + 2) * x - (_A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _resize_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    n = x.shape[axis]
    if n == size:
        return x
    scale = np.float32(n) / np.float32(size)
    src = (np.arange(size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    base = np.floor(src)
    w = _weights((src - base).astype(np.float32))  # [size, 4]
    taps = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None], 0, n - 1)
    moved = np.moveaxis(x, axis, -1)  # [..., n]
    out = np.einsum("...sk,sk->...s", moved[..., taps], w.astype(x.dtype))
    return np.moveaxis(out, -1, axis)


def resize_pos_emb(table: np.ndarray, grid: int) -> np.ndarray:
    """ml-4m position table [1, D, h, w] -> [1, D, grid, grid], float32."""
    table = np.asarray(table, np.float32)
    return _resize_axis(_resize_axis(table, grid, 2), grid, 3).astype(np.float32)
