"""The demo's image tokenizers (`python -m mmjax.demo`): configs/tokenizer_<modality>.py with
FSQ 8-5-5-5 at 32 px (8 x 8 tokens), the patch-local encoder, a conv decoder of 16-32-64
channels (a quarter of conv-tiny's compute) and steps per modality. What these choices
measured: docs/experiments.md, "Demo tokenizers".

    python -m mmjax.train --config=configs/demo_tokenizer.py:modality=rgb --workdir=/tmp/tok_rgb
    python -m mmjax.train --config=configs/demo_tokenizer.py:modality=depth,quick --workdir=/tmp/q

Variants (comma-separated): modality=rgb|depth|normals|semseg (required), tokens=2d|1d (rgb
only; 1d: configs/tokenizer_1d.py's flexible-length 1D tokenizer with its MLP trunk at 32 px
instead, 32 tokens per image, trained on the same batches for the same steps: `python -m
mmjax.demo --rgb_tokens=1d`), and the flag quick (40 steps of 16 images, the scenes rendered
in-process: `python -m mmjax.demo --quick`).

    python -m mmjax.train --config=configs/demo_tokenizer.py:modality=rgb,tokens=1d --workdir=/tmp/t
"""

import importlib

from mmjax.configs import tokenizer_1d
from mmjax.configs.common import choose, parse_arg, ref_max, ref_min
from mmjax.data.scenes.constants import IMAGE_MODALITIES

VARIANTS = ("modality", "tokens", "quick")
TOKENS = ("2d", "1d")
# rgb learns the object colours last, so it trains longest.
STEPS = {"rgb": 1000, "depth": 600, "normals": 350, "semseg": 350}
QUICK_STEPS = 40


def get_config(arg=None):
    v = parse_arg(arg, VARIANTS)
    if "modality" not in v:
        raise ValueError(f"demo_tokenizer needs modality=, one of {IMAGE_MODALITIES}")
    modality = choose(v, "modality", IMAGE_MODALITIES, "rgb")
    quick = bool(v.get("quick"))
    tokens = choose(v, "tokens", TOKENS, "2d")
    if tokens == "1d" and modality != "rgb":
        raise ValueError(f"demo_tokenizer: tokens=1d is an rgb tokenizer, not a {modality} one")

    if tokens == "1d":  # its own model, quantizer and optimizer; the demo's data and steps
        # the MLP trunk: the ViT trunk decodes near the mean image at these budgets
        c = tokenizer_1d.get_config("quantizer=fsq,resolution=32,trunk=mlp")
    else:
        tokenizer = importlib.import_module(f"mmjax.configs.tokenizer_{modality}")
        c = tokenizer.get_config("quantizer=fsq")
        c.model.update(dict(encoder="patch", channels=16, channel_mult=(1, 2, 4)))
    c.data.resolution = 32
    c.data.batch_size = 16 if quick else 32
    # a process renders the scenes beside the training (the same batches in the same order)
    c.data.worker_count = 0 if quick else 1
    c.total_steps = QUICK_STEPS if quick else STEPS[modality]
    steps = c.get_ref("total_steps")
    if tokens == "2d":
        c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = ref_min(100, steps // 10)
    c.log_every = ref_max(steps // 20, 1)
    c.eval.every = ref_max(steps // 2, 1)
    c.checkpoint.every = ref_max(steps // 2, 1)
    c.eval.usage_images = 64
    return c
