"""Tokenizer for the `semseg` maps (class ids) of the embedded scenes: a conv autoencoder
with an FSQ quantizer, 64 px maps -> 8 x 8 tokens.

    python -m mmjax.train --config=configs/tokenizer_semseg.py --workdir=/tmp/tok_semseg
    python -m mmjax.train --config=configs/tokenizer_semseg.py:quantizer=vq,quick --workdir=/tmp/q

Variants (comma-separated): quantizer=fsq|vq|lfq|bsq|rvq, model=conv|vit, size=tiny|small|base,
resolution=64|128|256, and the flags quick (a short run for smoke tests and CPUs) and bf16
(bfloat16 compute, float32 parameters). Other data: `--config.data.source=array_record
--config.data.paths=/data/train-*.array_record`, or `--config.data.source=tfds
--config.data.tfds_name=NAME --config.data.keys="{'semseg': 'FEATURE'}"`.
"""

import ml_collections

from mmjax.configs.common import (
    QUANTIZERS,
    SHARDING_RULES,
    checkpoint,
    choose,
    mesh,
    optimizer,
    parse_arg,
    tokenizer_data,
)

VARIANTS = ("quantizer", "model", "size", "resolution", "quick", "bf16")


def get_config(arg=None):
    v = parse_arg(arg, VARIANTS)
    quick = bool(v.get("quick"))
    quantizer = choose(v, "quantizer", QUANTIZERS, "fsq")

    c = ml_collections.ConfigDict()
    c.trainer = "tokenizer"
    c.modality = "semseg"
    c.seed = 0
    c.total_steps = 60 if quick else 3000
    c.log_every = 10 if quick else 50
    c.max_bad_steps = 20  # stop after this many non-finite steps in a row
    c.data = tokenizer_data(int(v.get("resolution", 64)), quick)
    c.model = dict(
        type=choose(v, "model", ("conv", "vit"), "conv"),
        size=choose(v, "size", ("tiny", "small", "base"), "tiny"),
        compute_dtype="bfloat16" if v.get("bf16") else "float32",
    )
    if c.model.type == "conv":
        c.model.encoder = "conv"  # or "patch": codes that see only their own patch
    c.quantizer = QUANTIZERS[quantizer]
    if "dim" in c.quantizer:  # lfq/bsq: one latent channel per bit of the code
        c.model["z_channels" if c.model.type == "conv" else "z_dim"] = c.quantizer.dim
    c.optimizer = optimizer(
        learning_rate=1e-3,
        warmup_steps=10 if quick else 200,
        end_lr_factor=0.1,
        b2=0.99,
        weight_decay=1e-4,
    )
    c.mesh = mesh()
    c.sharding_rules = SHARDING_RULES
    c.checkpoint = checkpoint(every=30 if quick else 500)
    c.eval = dict(
        every=30 if quick else 500,
        num_images=8,  # validation images reconstructed, scored and drawn
        usage_images=64 if quick else 1024,  # codebook usage over this many (0 = off)
        split="validation",
    )
    return c
