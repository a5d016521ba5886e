"""Fixed sin-cos position embeddings (Transformer 1D; MAE-style 2D), as numpy arrays.

1D, for positions p and dim D: omega_i = 1 / 10000^(i / (D/2)), i < D/2, and the
embedding is [sin(p * omega), cos(p * omega)]. 2D: half of the channels embed the row,
half the column, each with the 1D formula at D/2; the grid is flattened row-major.
`layout="ml4m"` reproduces ml-4m's 2D table, which takes the first-half coordinate of token n
as n // height and the second as n % height (the same as row-major on square grids only).
"""

import numpy as np


def sincos_1d(positions, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """[N] positions (ints or floats) -> [N, dim] float32 embeddings; dim must be even."""
    if dim % 2:
        raise ValueError(f"sincos_1d: dim must be even, got {dim}")
    omega = 1.0 / temperature ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))
    angles = np.asarray(positions, np.float64).reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


SINCOS_2D_LAYOUTS = ("row_major", "ml4m")


def sincos_2d(
    height: int, width: int, dim: int, temperature: float = 10000.0, layout: str = "row_major"
) -> np.ndarray:
    """[height * width, dim] float32 embeddings of a row-major grid; dim % 4 == 0.
    layout: "row_major" (row, column) or "ml4m" (ml-4m's (n // height, n % height))."""
    if dim % 4:
        raise ValueError(f"sincos_2d: dim must be divisible by 4, got {dim}")
    if layout not in SINCOS_2D_LAYOUTS:
        raise ValueError(f"sincos_2d: layout must be one of {SINCOS_2D_LAYOUTS}, got {layout!r}")
    if layout == "ml4m":
        n = np.arange(height * width)
        rows, cols = n // height, n % height
    else:
        rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    emb_rows = sincos_1d(rows.reshape(-1), dim // 2, temperature)
    emb_cols = sincos_1d(cols.reshape(-1), dim // 2, temperature)
    return np.concatenate([emb_rows, emb_cols], axis=1)
