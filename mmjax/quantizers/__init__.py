"""Quantizers: VQ, residual and multi-scale VQ, FSQ, LFQ/BSQ. Pure maths, no I/O.

Every quantizer is a linen module with `__call__(z, train=False) -> QuantizerOutput`,
`decode_indices(indices)` and `codebook_size`; state other than parameters lives in the
`STATS` collection (apply with `mutable=[STATS]` when training).
"""

from mmjax.quantizers.build import QUANTIZERS, build_quantizer
from mmjax.quantizers.fsq import FSQ, FSQ_LEVELS
from mmjax.quantizers.lfq import LFQ
from mmjax.quantizers.multiscale import MultiScaleResidualQuantizer
from mmjax.quantizers.output import STATS, QuantizerOutput
from mmjax.quantizers.residual import ResidualQuantizer
from mmjax.quantizers.vq import VectorQuantizer

__all__ = [
    "FSQ",
    "FSQ_LEVELS",
    "LFQ",
    "QUANTIZERS",
    "STATS",
    "MultiScaleResidualQuantizer",
    "QuantizerOutput",
    "ResidualQuantizer",
    "VectorQuantizer",
    "build_quantizer",
]
