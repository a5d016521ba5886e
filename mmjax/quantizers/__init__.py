"""Quantizers: VQ, residual and multi-scale VQ, FSQ, LFQ/BSQ. Pure maths, no I/O.

Every quantizer is a linen module with `__call__(z, train=False) -> QuantizerOutput`,
`decode_indices(indices)` and `codebook_size`; state other than parameters lives in the
`STATS` collection (apply with `mutable=[STATS]` when training).

Bad values, the same for every quantizer: an input vector with a NaN or inf entry gets
index -1 and a NaN `quantized` row, and `metrics["nonfinite_inputs"]` is the fraction of
such vectors. `decode_indices` raises on concrete indices outside [0, codebook_size) and
decodes them to NaN inside `jit`; `valid_indices(indices, codebook_size)` is the mask.
"""

from mmjax.quantizers.build import QUANTIZERS, build_quantizer
from mmjax.quantizers.fsq import FSQ, FSQ_LEVELS
from mmjax.quantizers.lfq import LFQ
from mmjax.quantizers.multiscale import MultiScaleResidualQuantizer
from mmjax.quantizers.output import STATS, QuantizerOutput
from mmjax.quantizers.residual import ResidualQuantizer
from mmjax.quantizers.validation import valid_indices
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
    "valid_indices",
]
