"""Next-scale prediction (VAR) on pre-tokenized scenes: caption -> rgb token pyramids.

    python -m mmjax.train --config=configs/tokenizer_rgb.py:quantizer=msrvq --workdir=/tmp/tok_ms
    python -m mmjax.pretokenize --tokenizers rgb=/tmp/tok_ms --out /tmp/pretok_ms
    python -m mmjax.train --config=configs/nextscale.py --workdir=/tmp/nextscale \
        --config.data.path=/tmp/pretok_ms

Variants (comma-separated): size=tiny|small|base, and the flags quick (a short run for smoke
tests and CPUs) and bf16 (bfloat16 compute, float32 parameters).

The data is a pre-tokenized directory whose `data.tokens` modality came from a multi-scale
(quantizer=msrvq) tokenizer; that tokenizer bundle (named in the manifest, or
`data.tokenizer`) gives the code table the model builds its inputs from. The condition is
the `data.condition` sequence (the scenes' captions), padded to `condition.max_length`
tokens and dropped for a `condition.dropout` share of the examples (classifier-free
guidance at generation: `mmjax.fourm.nextscale.generate`, `python -m mmjax.eval.nextscale`).
"""

import ml_collections

from mmjax.configs.common import SHARDING_RULES, checkpoint, choose, mesh, optimizer, parse_arg

SIZES = ("tiny", "small", "base")
VARIANTS = ("size", "quick", "bf16")


def get_config(arg=None):
    v = parse_arg(arg, VARIANTS)
    size = choose(v, "size", SIZES, "tiny")
    quick = bool(v.get("quick"))

    c = ml_collections.ConfigDict()
    c.trainer = "nextscale"
    c.seed = 0
    c.total_steps = 40 if quick else 2000
    c.log_every = 10 if quick else 50
    c.max_bad_steps = 20  # stop after this many non-finite steps in a row
    c.data = dict(
        path="",  # a pre-tokenized directory
        val_path="",  # "" = validate on the first records of `path`
        tokens="tok_rgb",  # the multi-scale token modality
        condition="caption",  # the conditioning sequence
        tokenizer="",  # the multi-scale Tokenizer bundle; "" = the one the manifest names
        batch_size=16 if quick else 32,  # global
        seed=0,
        shuffle=True,
        worker_count=0,  # processes that pad the examples; 0 = in-process
        prefetch=2,
    )
    c.condition = dict(
        max_length=128,  # condition tokens (the scenes' captions hold up to about 100)
        dropout=0.1,  # share of examples trained without their condition
    )
    c.model = dict(
        size=size,  # a mmjax.fourm.nextscale.PRESETS name
        dtype="bfloat16" if v.get("bf16") else "float32",  # compute
        param_dtype="float32",
        qk_norm=False,
        attention_impl="",  # jax.nn.dot_product_attention's: "" = jax picks, "xla", "cudnn"
    )
    c.optimizer = optimizer(
        learning_rate=1e-3 if size == "tiny" else 3e-4,
        warmup_steps=5 if quick else 100,
        end_lr_factor=0.01,
        b2=0.95,
        weight_decay=0.05,
        decay="matrices",
    )
    c.mesh = mesh()
    c.sharding_rules = SHARDING_RULES
    c.checkpoint = checkpoint(every=20 if quick else 500)
    c.eval = dict(every=20 if quick else 500, num_examples=32 if quick else 256, batch_size=32)
    return c
