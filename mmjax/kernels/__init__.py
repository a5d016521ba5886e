"""Hand-tuned kernels, one folder per op (public function, reference, backends)."""

from mmjax.kernels.codebook_search import codebook_search

__all__ = ["codebook_search"]
