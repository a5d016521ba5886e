"""Tokenizer for the `depth` modality of the embedded scenes.

    python -m mmjax.train --config=configs/tokenizer_depth.py --workdir=/tmp/tok_depth
    python -m mmjax.train --config=configs/tokenizer_depth.py:quantizer=vq,quick --workdir=/tmp/q

Variants (comma-separated): quantizer=fsq|vq|lfq|bsq|rvq, model=conv|vit,
size=tiny|small|base, resolution=64|128|256, quick.
"""

from mmjax.train.tokenizer_config import tokenizer_config


def get_config(arg=None):
    return tokenizer_config("depth", arg)
