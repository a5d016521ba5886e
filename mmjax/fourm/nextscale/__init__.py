"""Next-scale prediction (VAR) over multi-scale token pyramids: the block-causal layout, the
`NextScale` transformer on the 4M trunk blocks, generation with guidance, and its bundle."""

from mmjax.fourm.nextscale.bundle import load_nextscale, save_nextscale
from mmjax.fourm.nextscale.codes import code_table, tokenizer_layout
from mmjax.fourm.nextscale.condition import NextScaleExample, pad_conditions
from mmjax.fourm.nextscale.generate import generate
from mmjax.fourm.nextscale.layout import block_causal_mask, next_scale_inputs
from mmjax.fourm.nextscale.model import CODES, PRESETS, NextScale, build_nextscale

__all__ = [
    "CODES",
    "PRESETS",
    "NextScale",
    "NextScaleExample",
    "block_causal_mask",
    "build_nextscale",
    "code_table",
    "generate",
    "load_nextscale",
    "next_scale_inputs",
    "pad_conditions",
    "save_nextscale",
    "tokenizer_layout",
]
