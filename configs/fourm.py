"""4M (masked multimodal encoder-decoder) on pre-tokenized scenes.

    python -m mmjax.train --config=configs/fourm.py:size=tiny --workdir=/tmp/fourm \
        --config.data.path=/tmp/pretok
    python launch/aot_compile.py --config=configs/fourm.py:size=base,fsdp --topology=v5p:4x4x4

Variants (comma-separated): size=tiny|small|base|large|xlarge, mixture=<a mmjax.fourm.MIXTURES
name>, and the flags quick (a short run for smoke tests and CPUs), bf16 (bfloat16 compute,
float32 parameters), remat (rematerialize each block) and fsdp (all devices on the FSDP axis,
for the large presets).

The data is a pre-tokenized directory (`python -m mmjax.pretokenize`): data.path, and
data.val_path for validation (without it, evaluation masks the first records of the training
data with a fixed seed). The modality registry comes from that directory's manifest unless
`modalities` gives it; without data (AOT compiles), the 4M-7-like registry of the scenes.

The schedule can be measured in tokens: with total_tokens > 0, total_steps = total_tokens over
the tokens per step (batch_size x (input_budget + target_budget)); likewise
optimizer.warmup_tokens > 0 gives the warmup steps.
"""

import ml_collections

from mmjax.configs.common import SHARDING_RULES, checkpoint, choose, mesh, optimizer, parse_arg

SIZES = ("tiny", "small", "base", "large", "xlarge")
VARIANTS = ("size", "mixture", "quick", "bf16", "remat", "fsdp")


def get_config(arg=None):
    v = parse_arg(arg, VARIANTS)
    size = choose(v, "size", SIZES, "tiny")
    quick = bool(v.get("quick"))

    c = ml_collections.ConfigDict()
    c.trainer = "fourm"
    c.seed = 0
    c.total_steps = 60 if quick else 4000
    c.total_tokens = 0  # > 0: replaces total_steps (see above)
    c.grad_accum_steps = 1  # microbatches per step; the same gradients as one big batch
    c.log_every = 10 if quick else 50
    c.max_bad_steps = 20  # stop after this many non-finite steps in a row
    c.data = dict(
        path="",  # a pre-tokenized directory
        val_path="",  # "" = validate on the first records of `path`
        modalities=(),  # names to read; () = every one in the manifest
        max_lengths={},  # sequence name -> max_length; {} = from the manifest(s)
        batch_size=16 if quick else 64,  # global
        seed=0,
        shuffle=True,
        worker_count=0,  # processes that mask the examples; 0 = in-process
        prefetch=2,
    )
    # The registry, name -> mmjax.fourm.ModalitySpec fields; {} = from the data's manifest.
    c.modalities = {}
    c.masking = dict(
        input_budget=64 if quick else 128,  # encoder tokens per example
        target_budget=64 if quick else 128,  # decoder tokens per example
        mixture=v.get("mixture", "all_to_all"),  # a mmjax.fourm.MIXTURES name
        span_mean_length=3.0,  # text span masking
        max_input_tokens={},  # name -> cap on its input tokens; {} = no caps
        max_target_tokens={},  # name -> cap on its target tokens; {} = no caps
        budget_rule="fill",  # "fill" (budgets fill the totals) or "ml4m" (floored, clamped)
        span_rule="t5",  # text targets: "t5" (spans, eos) or "ml4m" (independent drops)
        ar_rate_1d=0.5,  # 1D image tokens: share of examples laid out left to right (AR)
    )
    c.model_init = ""  # a 4M bundle (e.g. a converted ml-4m model) to start from; "" = random
    c.model = dict(
        size=size,  # a mmjax.fourm.PRESETS name
        dtype="bfloat16" if v.get("bf16") else "float32",  # compute
        param_dtype="float32",
        remat=bool(v.get("remat")),
        qk_norm=False,
        attention_impl="",  # jax.nn.dot_product_attention's: "" = jax picks, "xla", "cudnn"
        head_impl="dense",  # or "grouped": each token through its own modality's head only
        head_chunk=64,  # grouped heads: tokens per chunk
    )
    # False (4M): the mean of the per-modality losses; True: the mean over all target tokens
    c.loss = dict(per_token=False)
    c.optimizer = optimizer(
        learning_rate=1e-3 if size in ("tiny", "small") else 3e-4,
        warmup_steps=10 if quick else 200,
        end_lr_factor=0.01,
        b2=0.95,
        weight_decay=0.05,
        decay="matrices",
    )
    c.optimizer.warmup_tokens = 0  # > 0: replaces warmup_steps
    c.mesh = mesh(fsdp=bool(v.get("fsdp")))
    c.sharding_rules = SHARDING_RULES
    c.checkpoint = checkpoint(every=30 if quick else 500)
    c.eval = dict(every=30 if quick else 500, num_examples=64 if quick else 256, batch_size=32)
    return c
