"""The demo's 4M (`python -m mmjax.demo`): configs/fourm.py:size=tiny,mixture=rgb_first with
grouped output heads, 64 input and 64 target tokens per example, on the demo's pre-tokenized
scenes (data paths from the command line; the demo sets them to its workdir's).

    python -m mmjax.train --config=configs/demo_fourm.py --workdir=/tmp/fourm \
        --config.data.path=workdirs/demo/data/train \
        --config.data.val_path=workdirs/demo/data/validation

Variants: the flag quick (150 steps of 16 examples: `python -m mmjax.demo --quick`).
"""

from mmjax.configs import fourm
from mmjax.configs.common import parse_arg, ref_max, ref_min

VARIANTS = ("quick",)


def get_config(arg=None):
    quick = bool(parse_arg(arg, VARIANTS).get("quick"))

    c = fourm.get_config("size=tiny,mixture=rgb_first")
    c.data.batch_size = 16 if quick else 32
    # one device: the heads sorted by modality (same logits, 482 -> 321 ms per step here)
    c.model.head_impl = "grouped"
    c.masking.input_budget = 64
    c.masking.target_budget = 64
    c.total_steps = 150 if quick else 1700
    steps = c.get_ref("total_steps")
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = ref_min(200, steps // 10)
    c.log_every = ref_max(steps // 40, 1)
    c.eval.every = ref_max(steps // 4, 1)
    c.checkpoint.every = ref_max(steps // 4, 1)
    c.eval.num_examples = 16 if quick else 64  # the validation scenes the demo pre-tokenizes
    c.eval.batch_size = 16
    return c
