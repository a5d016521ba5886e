"""The demo driver: stages, then tasks, then metrics.json and a printed summary."""

import argparse
import dataclasses
import os
import sys
import time

from mmjax.demo.stages import (
    PLANS,
    RGB_TOKENS,
    pretokenize_scenes,
    save_plan,
    seeded,
    train_fourm_model,
    train_tokenizers,
)
from mmjax.storage import paths
from mmjax.train.preemption import Preempted

# One workdir per mode: a workdir begun in one mode refuses the other (plan.json).
WORKDIRS = {"default": "workdirs/demo", "quick": "workdirs/demo_quick"}


def run_demo(
    workdir: str, mode: str = "default", seed: int = 0, log=print, rgb_tokens: str = "2d"
) -> dict:
    """Runs (or resumes) the demo in `workdir`; returns the metrics it wrote. `seed` seeds
    the training stages (0: the configs' own seeds) and the generation tasks; rgb_tokens:
    "2d" or "1d", the rgb tokenizer (see `stages.Plan`)."""
    from mmjax.demo.tasks import Tasks

    if mode not in PLANS:
        raise ValueError(f"demo mode must be one of {sorted(PLANS)}, got {mode!r}")
    plan = dataclasses.replace(seeded(PLANS[mode], seed), rgb_tokens=rgb_tokens)
    start = time.perf_counter()
    save_plan(workdir, mode, plan)
    toks = train_tokenizers(workdir, plan, log)
    data = pretokenize_scenes(workdir, plan, toks, log)
    bundle = train_fourm_model(workdir, plan, data, log)
    log(f"[demo] generating on {plan.eval_scenes} validation scenes")
    tasks = Tasks(bundle, toks, data, plan, seed)
    out_dir = os.path.join(workdir, "results")
    tasks.reconstructions(out_dir)
    results = {
        "mode": mode,
        "rgb_to_all": tasks.rgb_to_all(out_dir),
        "rgb_tokens": plan.rgb_tokens,
        "caption_to_rgb": tasks.caption_to_rgb(out_dir),
        "caption_to_rgb_direct": tasks.caption_to_rgb_direct(out_dir),
        "complete_image": tasks.complete_image(out_dir),
    }
    results["seconds"] = round(time.perf_counter() - start, 1)
    paths.write_json(os.path.join(out_dir, "metrics.json"), results, indent=1)
    log(summary(results))
    log(f"[demo] grids and metrics.json in {out_dir} ({results['seconds']:.0f} s)")
    return results


SUMMARY = (  # task, modality, metric, higher is better
    ("rgb_to_all", "depth", "abs_rel", False),
    ("rgb_to_all", "normals", "mean", False),
    ("rgb_to_all", "semseg", "miou", True),
    ("rgb_to_all", "caption", "pair_recall", True),
    ("rgb_to_all", "caption", "pair_precision", True),
    ("rgb_to_all", "boxes", "mean_iou", True),
)


def summary(results: dict) -> str:
    lines = [f"{'task':28s} {'generated':>10s} {'baseline':>10s} {'ceiling':>10s}"]
    for task, m, key, _ in SUMMARY:
        r = results[task][m]
        ceiling = r.get("tokenizer_ceiling", {}).get(key, float("nan"))
        name = f"{m}: {key}"
        lines.append(
            f"{name:28s} {r['generated'][key]:10.3f} {r['baseline'][key]:10.3f} {ceiling:10.3f}"
        )
    c = results["caption_to_rgb"]
    lines.append(
        f"{'caption->rgb: colours':28s} {c['colour_presence']:10.3f} "
        f"{c['baseline_mean_image']:10.3f} {c['tokenizer_ceiling']:10.3f}"
    )
    # the same images scored against the next scene's caption: what is not caption-specific
    lines.append(f"{'  (vs another caption)':28s} {c['other_scenes_colours']:10.3f}")
    # log p of the true rgb tokens at object positions (1D tokens: all positions), given the
    # caption vs another scene's
    where = "all" if "rgb_logp_objects_caption" not in c else "objects"
    lines.append(
        f"{f'caption->rgb: {where} logp':28s} {c[f'rgb_logp_{where}_caption']:10.3f} "
        f"{c[f'rgb_logp_{where}_another_caption']:10.3f} {c['rgb_logp_uniform']:10.3f}"
        "  (another caption; uniform)"
    )
    d = results.get("caption_to_rgb_direct")
    for scheme in ("maskgit", "ar") if d else ():
        if scheme in d:
            lines.append(
                f"{f'caption->rgb direct: {scheme}':28s} {d[scheme]['colour_presence']:10.3f} "
                f"{d['baseline_mean_image']:10.3f} {d['tokenizer_ceiling']:10.3f}"
            )
            lines.append(
                f"{'  (vs another caption)':28s} {d[scheme]['other_scenes_colours']:10.3f}"
            )
    e = results["complete_image"]
    name, key = (
        ("completion: psnr right half", "psnr_right_half")
        if "psnr_right_half" in e
        else (f"completion: psnr (first {e.get('known_tokens')})", "psnr_completed")
    )
    lines.append(
        f"{name:28s} {e[key]:10.2f} {e['baseline_mean_image']:10.2f} {e['tokenizer_ceiling']:10.2f}"
    )
    if "prefix_only" in e:
        lines.append(f"{'  (known prefix decoded)':28s} {e['prefix_only']:10.2f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m mmjax.demo",
        description="Runs mmjax end to end on the embedded scenes, on a CPU: trains the rgb, "
        "depth, normals and semseg tokenizers, pre-tokenizes the scenes, trains a tiny 4M model "
        "on them, generates across modalities, and writes a PNG grid per task and metrics.json "
        "into the workdir. Every stage resumes: re-running the command skips what is done.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--workdir",
        default=argparse.SUPPRESS,
        help="where everything is written (default: workdirs/demo, with --quick "
        "workdirs/demo_quick, with --rgb_tokens=1d a suffix _1d, with --seed N a suffix "
        "_seedN: a workdir holds one run)",
    )
    p.add_argument("--quick", action="store_true", help="a few-minute run that checks plumbing")
    p.add_argument(
        "--rgb_tokens",
        "--rgb-tokens",
        choices=RGB_TOKENS,
        default="2d",
        help="the rgb tokenizer: 2d (an 8 x 8 grid) or 1d (configs/tokenizer_1d.py:trunk=mlp's 32 "
        "coarse-to-fine tokens, trained for the same steps); every task runs with either",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every training stage (parameters, data order, masking) and of the "
        "generation tasks; 0 keeps the configs' own seeds",
    )
    args = p.parse_args(argv)
    mode = "quick" if args.quick else "default"
    try:
        one_d = "_1d" if args.rgb_tokens == "1d" else ""
        default = WORKDIRS[mode] + one_d + (f"_seed{args.seed}" if args.seed else "")
        return run_demo(
            getattr(args, "workdir", default), mode, args.seed, rgb_tokens=args.rgb_tokens
        )
    except Preempted as e:  # a stage saved its checkpoint: re-running resumes there
        print(f"{p.prog}: {e}", flush=True)
        sys.exit(0)
