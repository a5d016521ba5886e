"""The demo's training stages, each resumable: a stage whose output exists in the workdir is
skipped, and an interrupted one resumes from its checkpoints (the trainers' own resume).

    tokenizers  workdir/tok_<m>/tokenizer      rgb, depth, normals, semseg (FSQ, conv)
    pretokenize workdir/data/{train,validation} token ArrayRecords + text tokenizer
    4M          workdir/fourm/fourm            a 4M model on all seven modalities
"""

import dataclasses
import json
import os

from mmjax.data.pretokenized import MANIFEST
from mmjax.data.scenes.constants import IMAGE_MODALITIES


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one demo mode. The tokenizers downsample 4x, so a resolution of 32 gives an
    8 x 8 token grid per image modality. `tokenizer_steps` per modality: rgb needs the most,
    its object colours are the last thing it learns (at 500 steps red and green objects
    still come back orange and blue; at 1000 most are right, cyan still drifts to blue).
    `tokenizer_encoders`: "conv" or "patch" per modality. Every modality uses the patch-local
    encoder: with the conv encoder a uniform floor patch of semseg took one of 190 codes
    depending on its surroundings (5.1 nats over all semseg tokens), noise the 4M had to
    predict; patch-local codes have 2.6 nats at the same reconstruction mIoU (0.90). For rgb
    (the 4M's input is its pixels; its tokens are only generated) the 4M's validation loss on
    tok_rgb fell from 5.2 to 4.1 nats and generated images show floor and objects instead of
    colour noise, at a reconstruction PSNR of 25.2 instead of 25.4 dB. `tokenizer_workers`:
    processes that render the scenes while the tokenizer trains (the same batches in the same
    order, identical losses; in the full run 0.437 -> 0.413 s per rgb step on 2 CPU cores);
    the quick plan renders in-process."""

    resolution: int
    tokenizer_steps: dict
    tokenizer_batch: int
    train_scenes: int
    val_scenes: int
    text_examples: int
    fourm_size: str
    fourm_steps: int
    fourm_batch: int
    budget: int
    eval_scenes: int
    maskgit_steps: int
    mixture: str = "rgb_first"
    fourm_learning_rate: float = 2e-3
    tokenizer_workers: int = 0
    tokenizer_encoders: dict = dataclasses.field(
        default_factory=lambda: dict.fromkeys(IMAGE_MODALITIES, "patch")
    )


PLANS = {
    "quick": Plan(
        resolution=32,
        tokenizer_steps=dict.fromkeys(IMAGE_MODALITIES, 40),
        tokenizer_batch=16,
        train_scenes=256,
        val_scenes=16,
        text_examples=300,
        fourm_size="tiny",
        fourm_steps=150,
        fourm_batch=16,
        budget=64,
        eval_scenes=8,
        maskgit_steps=4,
    ),
    "default": Plan(
        resolution=32,
        tokenizer_steps={"rgb": 1000, "depth": 600, "normals": 350, "semseg": 350},
        tokenizer_batch=32,
        train_scenes=2000,
        val_scenes=64,
        text_examples=2000,
        fourm_size="tiny",
        fourm_steps=1700,
        fourm_batch=32,
        budget=64,
        eval_scenes=64,
        maskgit_steps=8,
        tokenizer_workers=1,
    ),
}
# 16 -> 32 -> 64 channels at 32, 16, 8 px: a quarter of the conv-tiny preset's compute
TOKENIZER_MODEL = {"type": "conv", "size": "tiny", "channels": 16, "channel_mult": [1, 2, 4]}


PLAN_FILE = "plan.json"


def save_plan(workdir: str, mode: str, plan: Plan) -> None:
    """Records the plan in `workdir/plan.json`; a workdir begun with another plan is refused
    (its stages would be found and mixed with this plan's)."""
    path = os.path.join(workdir, PLAN_FILE)
    record = {"mode": mode, **dataclasses.asdict(plan)}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != record:
            raise ValueError(
                f"{workdir} holds a demo run of mode {old.get('mode')!r} with another plan "
                f"({path}); use a new --workdir for mode {mode!r}"
            )
        return
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)


def load_plan(workdir: str) -> Plan:
    """The plan a demo workdir was made with (for colabs and scripts that reuse it)."""
    path = os.path.join(workdir, PLAN_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} a `python -m mmjax.demo` workdir?")
    with open(path) as f:
        record = json.load(f)
    record.pop("mode", None)
    return Plan(**record)


def _done(path: str) -> bool:
    return os.path.exists(path)


def train_tokenizers(workdir: str, plan: Plan, log=print) -> dict:
    """{modality: bundle dir}, training the missing ones."""
    from mmjax.train.tokenizer_config import tokenizer_config
    from mmjax.train.tokenizer_trainer import train_tokenizer

    dirs = {}
    for m in IMAGE_MODALITIES:
        run = os.path.join(workdir, f"tok_{m}")
        dirs[m] = os.path.join(run, "tokenizer")
        if _done(os.path.join(dirs[m], "tokenizer.json")):
            log(f"[demo] tokenizer {m}: found {dirs[m]}")
            continue
        c = tokenizer_config(m, "quantizer=fsq")
        c.model.update(TOKENIZER_MODEL, encoder=plan.tokenizer_encoders[m])
        c.data.resolution = plan.resolution
        c.data.batch_size = plan.tokenizer_batch
        c.data.worker_count = plan.tokenizer_workers
        steps = plan.tokenizer_steps[m]
        c.total_steps = steps
        c.optimizer.warmup_steps = min(100, steps // 10)
        c.optimizer.learning_rate = 2e-3
        c.log_every = max(steps // 20, 1)
        c.eval.every = c.checkpoint.every = max(steps // 2, 1)
        c.eval.usage_images = 64
        log(f"[demo] training the {m} tokenizer ({steps} steps) in {run}")
        final = train_tokenizer(c, run)
        log(f"[demo] tokenizer {m}: " + ", ".join(f"{k}={v:.3g}" for k, v in final.items()))
    return dirs


def pretokenize_scenes(workdir: str, plan: Plan, tokenizer_dirs: dict, log=print) -> dict:
    """{split: pre-tokenized dir} for train and validation scenes."""
    from mmjax.data import ScenesSource
    from mmjax.pretokenize import pretokenize

    out, text = {}, None
    for split, n in (("train", plan.train_scenes), ("validation", plan.val_scenes)):
        out[split] = os.path.join(workdir, "data", split)
        if _done(os.path.join(out[split], MANIFEST)):
            log(f"[demo] pre-tokenized {split}: found {out[split]}")
        else:
            log(f"[demo] pre-tokenizing {n} {split} scenes into {out[split]}")
            pretokenize(
                ScenesSource(split, plan.resolution, n), tokenizer_dirs, out[split],
                text_tokenizer=text, text_examples=plan.text_examples,
                resolution=plan.resolution, batch_size=64,
                info={"source": "scenes", "split": split},
            )  # fmt: skip
        # validation uses the text tokenizer of the train split
        text = os.path.join(out["train"], "text_tokenizer.json")
    return out


def train_fourm_model(workdir: str, plan: Plan, data: dict, log=print) -> str:
    """The 4M bundle dir, training it if missing."""
    from mmjax.train.fourm_config import fourm_config
    from mmjax.train.fourm_trainer import train_fourm

    run = os.path.join(workdir, "fourm")
    bundle = os.path.join(run, "fourm")
    if _done(os.path.join(bundle, "fourm.json")):
        log(f"[demo] 4M: found {bundle}")
        return bundle
    c = fourm_config(f"size={plan.fourm_size},mixture={plan.mixture}")
    c.data.path, c.data.val_path = data["train"], data["validation"]
    c.data.batch_size = plan.fourm_batch
    # one device: the heads sorted by modality (same logits, 482 -> 321 ms per step here)
    c.model.head_impl = "grouped"
    c.masking.input_budget = c.masking.target_budget = plan.budget
    c.total_steps = plan.fourm_steps
    c.optimizer.warmup_steps = min(200, plan.fourm_steps // 10)
    c.optimizer.learning_rate = plan.fourm_learning_rate
    c.log_every = max(plan.fourm_steps // 40, 1)
    c.eval.every = c.checkpoint.every = max(plan.fourm_steps // 4, 1)
    c.eval.num_examples = min(plan.val_scenes, 128)
    c.eval.batch_size = 16
    log(f"[demo] training 4M-{plan.fourm_size} ({plan.fourm_steps} steps) in {run}")
    final = train_fourm(c, run)
    log("[demo] 4M validation: " + ", ".join(f"{k}={v:.3g}" for k, v in final.items()))
    return bundle
