"""Tokenizer train-step throughput: images/s per model size and compute dtype, the
bfloat16/float32 ratio measured in the same run, the compiler's flop count per step and, on
accelerators with a known peak, the model-flops utilization (MFU).

    python benchmarks/train_tokenizer.py                          # tiny, f32 and bf16
    python benchmarks/train_tokenizer.py --sizes tiny,small --batch-size 64 --steps 20

One step = the full trainer step (`TokenizerTrainer.jit_train_step`): forward, quantizer,
losses, backward, AdamW, non-finite guard; the batch is a fixed global batch of scenes
(data loading is benchmarked by benchmarks/data_pipeline.py). Devices: all local devices on
a ('data',) mesh.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from codebook_search import peak_flops

from mmjax.configs import load
from mmjax.data import ScenesSource
from mmjax.train.tokenizer_trainer import TokenizerTrainer


def bench(size, dtype, args):
    arg = f"quantizer={args.quantizer},model={args.model},size={size}"
    config = load(f"tokenizer_{args.modality}", arg + (",bf16" if dtype == "bf16" else ""))
    config.data.batch_size = args.batch_size
    config.data.resolution = args.resolution
    config.eval.usage_images = 0
    trainer = TokenizerTrainer(config)  # no workdir: steps only
    source = ScenesSource("train", args.resolution, args.batch_size)
    raw = trainer._global(np.stack([source[i][args.modality] for i in range(args.batch_size)]))
    state = trainer.init_state(raw)
    step = trainer.jit_train_step()
    key = jax.random.key(0)
    with jax.set_mesh(trainer.mesh):
        flops = (step.lower(state, raw, key).compile().cost_analysis() or {}).get("flops", 0.0)
        state, metrics = step(state, raw, key)  # compile + warm-up
        jax.block_until_ready(metrics)
        times = []
        for i in range(args.steps):
            t0 = time.perf_counter()
            state, metrics = step(state, raw, jax.random.fold_in(key, i))
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    peak = peak_flops(jax.devices()[0], jnp.bfloat16 if dtype == "bf16" else jnp.float32)
    mfu = flops / t / (peak * jax.device_count()) if peak and flops else None
    return {"ms": t * 1e3, "img_s": args.batch_size / t, "gflop": flops / 1e9, "mfu": mfu}


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--sizes", default="tiny", help="comma-separated model sizes")
    p.add_argument("--dtypes", default="f32,bf16", help="comma-separated compute dtypes")
    p.add_argument("--modality", default="rgb", help="image modality of the scenes")
    p.add_argument("--model", default="conv", help="autoencoder: conv or vit")
    p.add_argument("--quantizer", default="fsq", help="fsq, vq, lfq, bsq or rvq")
    p.add_argument("--batch-size", type=int, default=32, help="global batch")
    p.add_argument("--resolution", type=int, default=64, help="image size in pixels")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    args = p.parse_args()
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} x{jax.device_count()}, jax {jax.__version__}")
    print(
        f"{args.model} {args.modality} {args.resolution}px, quantizer {args.quantizer}, "
        f"global batch {args.batch_size}, median of {args.steps} steps"
    )
    print("| size | dtype | ms/step | images/s | GFLOP/step | MFU | speed vs f32 |")
    print("|------|-------|--------:|---------:|-----------:|----:|-------------:|")
    for size in args.sizes.split(","):
        base = None
        for dtype in args.dtypes.split(","):
            r = bench(size, dtype, args)
            base = base or r["ms"]
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
            print(
                f"| {size} | {dtype} | {r['ms']:.1f} | {r['img_s']:.1f} | {r['gflop']:.2f} | "
                f"{mfu} | {base / r['ms']:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
