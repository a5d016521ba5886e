"""Nearest-code search: `codebook_search(x, codebook, ...)` -> int32 indices."""

from mmjax.kernels.codebook_search.api import IMPLS, METRICS, codebook_search

__all__ = ["IMPLS", "METRICS", "codebook_search"]
