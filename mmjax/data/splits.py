"""Deterministic train / validation splits by hashing a stable key of each example (a file's
relative path, a record's index), and a source restricted to a subset of indices.

A key is in the validation split when the first 8 bytes of its SHA-256, read as a fraction
of 2**64, are below `validation_fraction`: the same on every machine and Python version,
independent of listing order, and a key keeps its side when other examples are added.
"""

import hashlib

import numpy as np

SPLITS = ("train", "validation", "all")


def hash_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key`."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def in_split(key: str, split: str, validation_fraction: float) -> bool:
    """Whether the example named `key` belongs to `split` ("train", "validation", "all")."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction}")
    if split == "all":
        return True
    held_out = hash_fraction(key) < validation_fraction
    if split == "validation":
        return held_out
    if split == "train":
        return not held_out
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def split_indices(n: int, split: str, validation_fraction: float) -> np.ndarray:
    """The indices of `range(n)` in `split`, keyed by the index's decimal string."""
    return np.array([i for i in range(n) if in_split(str(i), split, validation_fraction)], np.int64)


class SubsetSource:
    """Items `indices` of `source`, re-indexed from 0 (for a held-out split of records)."""

    def __init__(self, source, indices, what: str = "source"):
        self.source, self.indices = source, np.asarray(indices, np.int64)
        if len(self.indices) == 0:
            raise ValueError(f"{what}: the split is empty; change data.validation_fraction")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.source[int(self.indices[int(index)])]

    def __repr__(self) -> str:
        return f"SubsetSource({self.source!r}, {len(self.indices)} items)"
