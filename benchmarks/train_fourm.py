"""4M train-step throughput: tokens/s per preset in bfloat16, with the fused attention path
(`jax.nn.dot_product_attention`, implementation chosen by JAX: cuDNN flash on GPU where it
applies) against plain XLA attention in the same run, the model flops per step and, on
accelerators with a known peak, the model-flops utilization (MFU).

    python benchmarks/train_fourm.py                              # tiny on this machine
    python benchmarks/train_fourm.py --sizes tiny,base --batch-size 64 --steps 20
    python benchmarks/train_fourm.py --attention plain --heads dense,grouped --dtype float32 \
        --batch-size 32 --budget 64       # the demo's step: the heads' two implementations

One step = the full trainer step (`FourMTrainer.jit_train_step`): encoder, decoder, per-
modality loss, backward, AdamW, non-finite guard. The batch is a fixed global batch masked by
`FourMMasking` from random tokens of the 4M-7-like scenes registry (data loading is
benchmarked by benchmarks/data_pipeline.py). Model flops: 6 x parameters (without the
embedding tables, which are lookups) x
tokens plus the attention matmuls (12 x layers x tokens x context x width), the usual
accounting; the compiler's own count is printed beside it. Devices: all local devices on a
('data',) mesh.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from codebook_search import peak_flops

from mmjax.configs import fourm
from mmjax.fourm import FourMMasking
from mmjax.train.fourm_trainer import FourMTrainer


def synthetic_batch(trainer: FourMTrainer, batch_size: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    masking = FourMMasking(
        trainer.registry, trainer.input_budget, trainer.target_budget,
        sentinel_ids=range(4, 104), eos_id=1,
    )  # fmt: skip
    examples = []
    for _ in range(batch_size):
        ex = {}
        for s in trainer.registry:
            if s.kind == "pixels":
                ex[s.name] = rng.random((*s.image_size, s.channels), np.float32)
            elif s.kind == "image_tokens":
                ex[s.name] = rng.integers(0, s.vocab_size, s.num_tokens)
            else:
                ex[s.name] = rng.integers(104, s.vocab_size, rng.integers(4, s.max_length - 1))
        examples.append(masking(ex, rng))
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def model_flops(trainer: FourMTrainer, batch_size: int) -> float:
    params = dict(trainer._abstract_state().params)
    params.pop("embeddings")  # table lookups, not matmuls
    n = sum(x.size for x in jax.tree.leaves(params))
    m = trainer.model
    e, t, d = trainer.input_budget, trainer.target_budget, m.width
    tokens = batch_size * (e + t)
    attn = 12 * batch_size * d * (m.encoder_depth * e * e + m.decoder_depth * (t * t + t * e))
    return 6 * n * tokens + attn


def bench(size: str, attention: str, heads: str, args) -> dict:
    config = fourm.get_config(f"size={size}" + (",bf16" if args.dtype == "bfloat16" else ""))
    config.model.head_impl = heads
    config.data.batch_size = args.batch_size
    config.masking.input_budget = config.masking.target_budget = args.budget
    # fused: cuDNN flash attention on GPU (JAX's default elsewhere); plain: XLA's einsum
    # softmax attention (what every backend runs without a fused kernel)
    gpu = jax.devices()[0].platform == "gpu"
    config.model.attention_impl = ("cudnn" if gpu else None) if attention == "fused" else "xla"
    trainer = FourMTrainer(config)  # no workdir: steps only
    batch = trainer._global_batch(synthetic_batch(trainer, args.batch_size))
    state = trainer.init_state(batch)
    step = trainer.jit_train_step()
    key = jax.random.key(0)
    with jax.set_mesh(trainer.mesh):
        compiled = step.lower(state, batch, key).compile()
        xla_flops = (compiled.cost_analysis() or {}).get("flops", 0.0)
        state, metrics = step(state, batch, key)  # compile + warm-up
        jax.block_until_ready(metrics)
        times = []
        for i in range(args.steps):
            t0 = time.perf_counter()
            state, metrics = step(state, batch, jax.random.fold_in(key, i))
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    flops = model_flops(trainer, args.batch_size)
    peak = peak_flops(jax.devices()[0], jnp.dtype(args.dtype))
    tokens = args.batch_size * 2 * args.budget
    return {
        "ms": t * 1e3,
        "tok_s": tokens / t,
        "gflop": flops / 1e9,
        "xla_gflop": xla_flops / 1e9,
        "mfu": flops / t / (peak * jax.device_count()) if peak else None,
        "loss": float(metrics["loss"]),
    }


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--sizes", default="tiny", help="comma-separated FourM presets")
    p.add_argument("--attention", default="fused,plain", help="attention paths: fused,plain")
    p.add_argument("--batch-size", type=int, default=16, help="global batch")
    p.add_argument("--budget", type=int, default=128, help="input and target tokens each")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--heads", default="dense", help="output heads: dense,grouped")
    p.add_argument(
        "--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="compute dtype"
    )
    args = p.parse_args()
    dev = jax.devices()[0]
    print(
        f"device: {jax.device_count()} x {dev.device_kind} ({dev.platform}), jax {jax.__version__}"
    )
    print(
        f"batch {args.batch_size} x ({args.budget} input + {args.budget} target) tokens, "
        f"{args.dtype}"
    )
    print(
        f"{'size':6s} {'attention':9s} {'heads':7s} {'ms/step':>9s} {'tokens/s':>10s} "
        f"{'model GFLOP':>11s} {'XLA GFLOP':>10s} {'MFU':>6s}"
    )
    for size in args.sizes.split(","):
        for attention in args.attention.split(","):
            for heads in args.heads.split(","):
                r = bench(size, attention, heads, args)
                mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] else "   n/a"
                print(
                    f"{size:6s} {attention:9s} {heads:7s} {r['ms']:9.1f} {r['tok_s']:10.0f} "
                    f"{r['gflop']:11.1f} {r['xla_gflop']:10.1f} {mfu}"
                )


if __name__ == "__main__":
    main()
