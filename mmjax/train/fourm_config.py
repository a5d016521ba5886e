"""Default config of the 4M trainer, with variants.

configs/fourm.py calls `fourm_config(arg)`; the arg string picks variants: `size=tiny|small|
base|large|xlarge`, `mixture=<a mmjax.fourm.MIXTURES name>`, and the flags `quick` (a short
run for smoke tests and CPUs), `bf16` (bfloat16 compute, float32 parameters), `remat`
(rematerialize each block) and `fsdp` (all devices on the FSDP axis, for large presets).

The data is a pre-tokenized directory (`python -m mmjax.pretokenize`):
`--config.data.path=DIR` (and optionally `--config.data.val_path=DIR` for validation; without
it, evaluation masks the first records of the training data with a fixed seed). The modality
registry comes from that directory's manifest unless `config.modalities` names it; without
data (AOT compiles), the 4M-7-like registry of the scenes is used.

The schedule is measured in tokens: with `total_tokens` > 0, total_steps = total_tokens over
the tokens per step (batch_size x (input_budget + target_budget)), and likewise
`optimizer.warmup_tokens` gives the warmup steps.
"""

import ml_collections

from mmjax.train.tokenizer_config import parse_arg

SIZES = ("tiny", "small", "base", "large", "xlarge")
VARIANTS = ("size", "mixture", "quick", "bf16", "remat", "fsdp")


def fourm_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_arg(arg)
    unknown = sorted(set(v) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown config variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    size = v.get("size", "tiny")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    quick = bool(v.get("quick", False))

    c = ml_collections.ConfigDict()
    c.trainer = "fourm"
    c.seed = 0
    c.total_steps = 60 if quick else 4000
    c.total_tokens = 0  # > 0: overrides total_steps (see the module docstring)
    c.grad_accum_steps = 1
    c.log_every = 10 if quick else 50
    c.max_bad_steps = 20
    c.data = dict(
        path="",
        val_path="",
        modalities=None,  # names to read (default: all in the manifest)
        max_lengths=None,  # sequence name -> max_length (default: from the manifest)
        batch_size=16 if quick else 64,
        seed=0,
        shuffle=True,
        worker_count=0,
        prefetch=2,
    )
    c.modalities = None  # explicit registry config (name -> ModalitySpec fields)
    c.masking = dict(
        input_budget=64 if quick else 128,
        target_budget=64 if quick else 128,
        mixture=v.get("mixture", "all_to_all"),
        span_mean_length=3.0,
        max_input_tokens=None,
        max_target_tokens=None,
    )
    c.model = dict(
        size=size,
        dtype="bfloat16" if v.get("bf16") else "float32",
        param_dtype="float32",
        remat=bool(v.get("remat", False)),
        qk_norm=False,
        attention_impl=None,
    )
    c.loss = dict(per_token=False)
    c.optimizer = dict(
        learning_rate=1e-3 if size in ("tiny", "small") else 3e-4,
        warmup_steps=10 if quick else 200,
        warmup_tokens=0,  # > 0: overrides warmup_steps
        end_lr_factor=0.01,
        b1=0.9,
        b2=0.95,
        weight_decay=0.05,
        decay="matrices",  # no weight decay on norms and biases
        grad_clip=1.0,
        ema_decay=0.0,
    )
    if v.get("fsdp"):
        c.mesh = dict(data=1, fsdp=-1, tensor=1)
    else:
        c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.sharding_rules = None  # None: mmjax.parallel.DEFAULT_RULES
    c.checkpoint = dict(every=30 if quick else 500, keep=3, async_save=True)
    c.eval = dict(every=30 if quick else 500, num_examples=64 if quick else 256, batch_size=32)
    return c
