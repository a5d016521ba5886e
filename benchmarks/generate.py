"""Generation throughput of `mmjax.fourm.generate`: MaskGIT, ROAR, and AR with and without
the KV cache, per FourM preset.

    python benchmarks/generate.py                      # tiny and base (2-core CPU: ~15 min)
    python benchmarks/generate.py --presets tiny       # ~30 s on a 2-core CPU
    python benchmarks/generate.py --presets base --batch 1 --reps 1   # ~5 min on 2 cores

Registry: tok_depth (conditioning) and tok_rgb, image tokens on a 16 x 16 grid (256 tokens,
vocab 1024), and a caption sequence with max_length 256 (vocab 1000). Image targets are
generated from tok_depth in `--steps` rounds; the caption is generated from tok_depth token
by token, always all 256 tokens (no eos), with the KV cache (`ar`) and by rerunning the
decoder over the whole 256-token buffer at every step (`ar_nocache`), in the same run.
Claim (issue 7): the KV cache makes AR generation of a 256-token sequence at least 3x faster
than recomputation. Each time is the median over --reps calls after one warm-up call that
compiles; tokens/s = batch * generated tokens / time. Random-init weights (throughput does not
depend on them). Prints a markdown table.
"""

import argparse
import statistics
import time

import flax.linen as nn
import jax
import numpy as np

from mmjax.fourm import build_fourm, build_registry, example_batch
from mmjax.fourm.generation.generate import GenerationStep, generate

GRID, IMAGE_VOCAB, TEXT_VOCAB, SEQ_LEN = (16, 16), 1024, 1000, 256


def registry():
    return build_registry({
        "tok_depth": dict(kind="image_tokens", vocab_size=IMAGE_VOCAB, grid=GRID),
        "tok_rgb": dict(kind="image_tokens", vocab_size=IMAGE_VOCAB, grid=GRID),
        "caption": dict(kind="sequence", vocab_size=TEXT_VOCAB, max_length=SEQ_LEN),
    })  # fmt: skip


def time_call(fn, reps: int) -> float:
    """Median wall time of `fn()` (which must block) over `reps` runs after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_preset(preset: str, batch: int, steps: int, reps: int) -> list[dict]:
    reg = registry()
    model = build_fourm({"size": preset}, reg)
    variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), example_batch(reg, 1, 4, 4)))
    rng = np.random.default_rng(0)
    cond = {"tok_depth": rng.integers(0, IMAGE_VOCAB, (batch, GRID[0] * GRID[1]))}
    cases = [
        ("maskgit", GenerationStep("tok_rgb", scheme="maskgit", steps=steps), 256),
        ("roar", GenerationStep("tok_rgb", scheme="roar", steps=steps), 256),
        ("ar (KV cache)", GenerationStep("caption", scheme="ar"), SEQ_LEN),
        ("ar_nocache", GenerationStep("caption", scheme="ar_nocache"), SEQ_LEN),
    ]
    rows = []
    for label, step, tokens in cases:
        target = step.target

        def run(step=step, target=target):
            out = generate(model, variables, reg, cond, [step], jax.random.key(1), eos_id=None)
            return jax.block_until_ready(out[target])

        seconds = time_call(run, reps)
        passes = steps if step.scheme in ("maskgit", "roar") else tokens
        rate = batch * tokens / seconds
        rows.append(dict(preset=preset, scheme=label, tokens=tokens, seconds=seconds, rate=rate,
                         steps=passes))  # fmt: skip
        print(f"  {preset} {label}: {seconds * 1e3:.1f} ms", flush=True)
    nocache = next(r["seconds"] for r in rows if r["scheme"] == "ar_nocache")
    for r in rows:
        r["vs"] = nocache / r["seconds"]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--presets", default="tiny,base", help="comma-separated FourM presets")
    parser.add_argument("--batch", type=int, default=2, help="examples generated per call")
    parser.add_argument("--steps", type=int, default=8, help="maskgit / roar rounds")
    parser.add_argument("--reps", type=int, default=3, help="timed calls (median reported)")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind}, jax {jax.__version__}, "
          f"batch {args.batch}")  # fmt: skip
    rows = []
    for preset in args.presets.split(","):
        rows += bench_preset(preset.strip(), args.batch, args.steps, args.reps)
    print()
    print("| preset | scheme | passes | tokens | ms / batch | tokens/s | speed vs ar_nocache |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['preset']} | {r['scheme']} | {r['steps']} | {r['tokens']} | "
              f"{r['seconds'] * 1e3:.1f} | {r['rate']:.0f} | {r['vs']:.1f}x |")  # fmt: skip
    for preset in dict.fromkeys(r["preset"] for r in rows):
        ratio = next(r["vs"] for r in rows if r["preset"] == preset and r["scheme"][:3] == "ar ")
        verdict = "met" if ratio >= 3 else "NOT met"
        print(f"\n{preset}: KV cache vs recompute, {SEQ_LEN}-token AR: {ratio:.1f}x "
              f"(claim >= 3x: {verdict})")  # fmt: skip


if __name__ == "__main__":
    main()
