"""4M (masked multimodal encoder-decoder) on pre-tokenized scenes.

    python -m mmjax.train --config=configs/fourm.py:size=tiny --workdir=/tmp/fourm \
        --config.data.path=/tmp/pretok
    python launch/aot_compile.py --config=configs/fourm.py:size=base,fsdp --topology=v5p:4x4x4

Variants (comma-separated): size=tiny|small|base|large|xlarge, mixture=<name>, quick, bf16,
remat, fsdp. See mmjax/train/fourm_config.py for every field.
"""

from mmjax.train.fourm_config import fourm_config


def get_config(arg=None):
    return fourm_config(arg)
