"""The demo's training stages, each resumable: a stage whose output exists in the workdir is
skipped, and an interrupted one resumes from its checkpoints (the trainers' own resume).

    tokenizers  workdir/tok_<m>/tokenizer      rgb, depth, normals, semseg
                                               (configs/demo_tokenizer.py; rgb 1D with
                                               rgb_tokens="1d": tokens=1d)
    pretokenize workdir/data/{train,validation} token ArrayRecords + text tokenizer
    4M          workdir/fourm/fourm            a 4M model on all seven modalities
                                               (configs/demo_fourm.py)

Each training stage logs the `python -m mmjax.train` command that reruns it alone.
"""

import dataclasses
import os

from mmjax.data.pretokenized import MANIFEST
from mmjax.data.scenes.constants import IMAGE_MODALITIES
from mmjax.storage import paths

RGB_TOKENS = ("2d", "1d")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one demo mode. The trainers' settings are config files: the tokenizers'
    configs/demo_tokenizer.py:modality=M[,quick] and the 4M's configs/demo_fourm.py[:quick],
    with `config_arg` the flag ("quick" or ""); `tokenizer_overrides` and `fourm_overrides`
    change config fields (dotted key -> value, as `--config.KEY=VALUE` does), e.g. fewer steps.
    `resolution` is the tokenizers' (`data.resolution`): the scenes are pre-tokenized and the
    generations scored at it. `rgb_tokens`: "2d" (the 8 x 8 grid) or "1d" (the flexible-length
    1D tokenizer's 32 coarse-to-fine tokens, configs/demo_tokenizer.py:tokens=1d); the 4M and
    its config are the same either way. The measurements behind the settings:
    docs/experiments.md."""

    config_arg: str
    resolution: int
    train_scenes: int
    val_scenes: int
    text_examples: int
    eval_scenes: int
    maskgit_steps: int
    tokenizer_overrides: dict = dataclasses.field(default_factory=dict)
    fourm_overrides: dict = dataclasses.field(default_factory=dict)
    rgb_tokens: str = "2d"

    def __post_init__(self):
        if self.rgb_tokens not in RGB_TOKENS:
            raise ValueError(f"rgb_tokens must be one of {RGB_TOKENS}, got {self.rgb_tokens!r}")


PLANS = {
    "quick": Plan(
        config_arg="quick",
        resolution=32,
        train_scenes=256,
        val_scenes=16,
        text_examples=300,
        eval_scenes=8,
        maskgit_steps=4,
    ),
    "default": Plan(
        config_arg="",
        resolution=32,
        train_scenes=2000,
        val_scenes=64,
        text_examples=2000,
        eval_scenes=64,
        maskgit_steps=8,
    ),
}


PLAN_FILE = "plan.json"


def seeded(plan: Plan, seed: int) -> Plan:
    """The plan with every training stage seeded by `seed` (parameter init, step keys, data
    order and masking: `seed` and `data.seed` of each config); seed 0 is the plan as it is."""
    if seed == 0:
        return plan
    seeds = {"seed": seed, "data.seed": seed}
    return dataclasses.replace(
        plan,
        tokenizer_overrides={**plan.tokenizer_overrides, **seeds},
        fourm_overrides={**plan.fourm_overrides, **seeds},
    )


def save_plan(workdir: str, mode: str, plan: Plan) -> None:
    """Records the plan in `workdir/plan.json`; a workdir begun with another plan is refused
    (its stages would be found and mixed with this plan's)."""
    path = os.path.join(workdir, PLAN_FILE)
    record = {"mode": mode, **dataclasses.asdict(plan)}
    if paths.exists(path):
        old = {"rgb_tokens": "2d", **paths.read_json(path)}  # plans from before the field
        if old != record:
            raise ValueError(
                f"{workdir} holds a demo run of mode {old.get('mode')!r} with another plan "
                f"({path}); use a new --workdir for mode {mode!r}"
            )
        return
    paths.makedirs(workdir)
    paths.write_json(path, record, indent=1)


def load_plan(workdir: str) -> Plan:
    """The plan a demo workdir was made with (for colabs and scripts that reuse it)."""
    path = os.path.join(workdir, PLAN_FILE)
    if not paths.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} a `python -m mmjax.demo` workdir?")
    record = paths.read_json(path)
    record.pop("mode", None)
    try:
        return Plan(**record)
    except TypeError as e:  # fields of another version's Plan
        raise ValueError(f"{path} is not a demo plan of this mmjax version: {e}") from None


def _done(path: str) -> bool:
    return paths.exists(path)


def _override(config, overrides: dict):
    """Sets dotted keys of `config` (the `--config.KEY=VALUE` of a Python caller)."""
    for key, value in overrides.items():
        node, path = config, key.split(".")
        for part in path[:-1]:
            node = node[part]
        if path[-1] not in node:
            raise KeyError(f"demo config override {key!r}: the config has no such field")
        node[path[-1]] = value
    return config


def _command(config_file: str, arg: str, run: str, overrides: dict) -> str:
    """The `python -m mmjax.train` command line that trains the same stage."""
    spec = f"{config_file}:{arg}" if arg else config_file
    flags = "".join(f" --config.{k}={v}" for k, v in overrides.items())
    return f"python -m mmjax.train --config={spec} --workdir={run}{flags}"


def _tokenizer_arg(plan: Plan, modality: str) -> str:
    one_d = "tokens=1d" if modality == "rgb" and plan.rgb_tokens == "1d" else ""
    return ",".join(filter(None, (f"modality={modality}", one_d, plan.config_arg)))


def tokenizer_stage_config(plan: Plan, modality: str):
    """configs/demo_tokenizer.py for `modality` under this plan."""
    from mmjax.configs import demo_tokenizer

    c = demo_tokenizer.get_config(_tokenizer_arg(plan, modality))
    c = _override(c, plan.tokenizer_overrides)
    if c.data.resolution != plan.resolution:
        raise ValueError(
            f"the demo's tokenizers train at data.resolution={c.data.resolution}, but the plan "
            f"pre-tokenizes and scores at resolution={plan.resolution}"
        )
    return c


def fourm_stage_config(plan: Plan, data: dict):
    """configs/demo_fourm.py under this plan, reading the pre-tokenized `data` splits."""
    from mmjax.configs import demo_fourm

    c = _override(demo_fourm.get_config(plan.config_arg), plan.fourm_overrides)
    c.data.path, c.data.val_path = data["train"], data["validation"]
    return c


def train_tokenizers(workdir: str, plan: Plan, log=print) -> dict:
    """{modality: bundle dir}, training the missing ones."""
    from mmjax.train.tokenizer_trainer import train_tokenizer

    dirs = {}
    for m in IMAGE_MODALITIES:
        run = os.path.join(workdir, f"tok_{m}")
        dirs[m] = os.path.join(run, "tokenizer")
        if _done(os.path.join(dirs[m], "tokenizer.json")):
            log(f"[demo] tokenizer {m}: found {dirs[m]}")
            continue
        c = tokenizer_stage_config(plan, m)
        command = _command(
            "configs/demo_tokenizer.py", _tokenizer_arg(plan, m), run, plan.tokenizer_overrides
        )
        log(f"[demo] training the {m} tokenizer ({c.total_steps} steps): {command}")
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
    from mmjax.train.fourm_trainer import train_fourm

    run = os.path.join(workdir, "fourm")
    bundle = os.path.join(run, "fourm")
    if _done(os.path.join(bundle, "fourm.json")):
        log(f"[demo] 4M: found {bundle}")
        return bundle
    c = fourm_stage_config(plan, data)
    overrides = {"data.path": c.data.path, "data.val_path": c.data.val_path}
    command = _command(
        "configs/demo_fourm.py", plan.config_arg, run, {**overrides, **plan.fourm_overrides}
    )
    log(f"[demo] training 4M-{c.model.size} ({c.total_steps} steps): {command}")
    final = train_fourm(c, run)
    log("[demo] 4M validation: " + ", ".join(f"{k}={v:.3g}" for k, v in final.items()))
    return bundle
