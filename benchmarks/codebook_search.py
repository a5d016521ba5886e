"""Nearest-code search: each path's median time, its ratio to the naive XLA path measured in
the same run, and the fraction of the device's compute roofline (2 N K D flops).

    python benchmarks/codebook_search.py                        # shapes A, B, C, small
    python benchmarks/codebook_search.py --shapes small,A --dtypes bf16
    python benchmarks/codebook_search.py --tpu-aot v5e:2x2      # compile for a TPU, memory only

Shapes: A (N=65536, D=32, K=16384), B (N=65536, D=256, K=8192), C (N=32768, D=8, K=262144),
small (N=4096, D=32, K=1024). Paths: `xla` (naive: the N x K distance matrix), `xla_chunked`
(tiles), and the Pallas kernel of the backend (`pallas`). On CPU the kernels run interpreted,
and only on problems small enough for that to finish (--interpret-max). The naive path is
skipped where its distance matrix does not fit in memory.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.kernels import codebook_search

SHAPES = {  # name: (N, D, K)
    "A": (65536, 32, 16384),
    "B": (65536, 256, 8192),
    "C": (32768, 8, 262144),
    "small": (4096, 32, 1024),
}
DTYPES = {"bf16": jnp.bfloat16, "f32": jnp.float32}
# Dense peak FLOP/s per chip: (bfloat16 matrix unit, float32). float32 is the IEEE FMA rate
# on GPUs (the kernels ask for exact float32 dots); None where no single figure applies.
PEAK_FLOPS = {
    "H100": (989e12, 67e12),
    "H200": (989e12, 67e12),
    "TPU v4": (275e12, None),
    "TPU v5 lite": (197e12, None),
    "TPU v5": (459e12, None),
    "TPU v6 lite": (918e12, None),
}


def peak_flops(device, dtype) -> float | None:
    for name, (bf16, f32) in PEAK_FLOPS.items():
        if device.device_kind.startswith(name) or name in device.device_kind:
            return bf16 if dtype == jnp.bfloat16 else f32
    return None


def memory_budget(device) -> int:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] * 0.8)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)


def median_time(fn, args, reps: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paths_for(platform: str, n: int, k: int, interpret_max: int):
    paths = {"xla": dict(impl="xla"), "xla_chunked": dict(impl="xla_chunked")}
    if platform in ("tpu", "gpu", "cuda"):
        paths["pallas"] = dict(impl="pallas")
    elif n * k <= interpret_max:
        paths["pallas_tpu (interpret)"] = dict(impl="pallas_tpu", interpret=True)
        paths["pallas_gpu (interpret)"] = dict(impl="pallas_gpu", interpret=True)
    return paths


def run_timed(args):
    device = jax.devices()[0]
    budget = memory_budget(device)
    print(
        f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, "
        f"{args.reps} timed runs per path (median), memory budget {budget / 2**30:.1f} GiB"
    )
    print(
        f"{'shape':<6} {'N':>6} {'D':>4} {'K':>7} {'dtype':<5} {'path':<24} {'ms':>10} "
        f"{'vs naive':>9} {'roofline':>9}"
    )
    rows = []
    for shape in args.shapes.split(","):
        n, d, k = SHAPES[shape]
        for dname in args.dtypes.split(","):
            dtype = DTYPES[dname]
            x = jax.random.normal(jax.random.key(0), (n, d), dtype)
            c = jax.random.normal(jax.random.key(1), (k, d), dtype)
            flops, peak = 2 * n * k * d, peak_flops(device, dtype)
            naive = None
            for name, kw in paths_for(device.platform, n, k, args.interpret_max).items():
                if name == "xla" and n * k * 4 * 2 > budget:
                    print(
                        f"{shape:<6} {n:>6} {d:>4} {k:>7} {dname:<5} {name:<24} "
                        f"{'does not fit':>10}"
                    )
                    continue
                fn = jax.jit(lambda a, b, kw=kw: codebook_search(a, b, **kw))
                t = median_time(fn, (x, c), args.reps)
                naive = t if name == "xla" else naive
                ratio = f"{naive / t:>8.2f}x" if naive else f"{'-':>9}"
                roof = f"{flops / t / peak:>8.1%}" if peak else f"{'n/a':>9}"
                rows.append(dict(shape=shape, dtype=dname, path=name, ms=t * 1e3))
                print(
                    f"{shape:<6} {n:>6} {d:>4} {k:>7} {dname:<5} {name:<24} {t * 1e3:>10.2f} "
                    f"{ratio} {roof}",
                    flush=True,
                )
    return rows


def run_tpu_aot(args):
    """Compiles each path for a TPU topology on this host and prints its temporary memory."""
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    device = topologies.get_topology_desc(platform="tpu", topology_name=args.tpu_aot).devices[0]
    sharding = NamedSharding(Mesh(np.array([device]), ("one",)), P())
    print(
        f"AOT compile for {device.device_kind} ({args.tpu_aot}), one chip; temporaries from "
        f"XLA's memory analysis (an N x K float32 matrix would be 4 N K bytes)"
    )
    print(f"{'shape':<6} {'dtype':<5} {'path':<12} {'temp MiB':>10} {'N x K f32 MiB':>14}")
    for shape in args.shapes.split(","):
        n, d, k = SHAPES[shape]
        for dname in args.dtypes.split(","):
            specs = [
                jax.ShapeDtypeStruct(s, DTYPES[dname], sharding=sharding) for s in ((n, d), (k, d))
            ]
            for impl in ("xla", "xla_chunked", "pallas"):
                fn = jax.jit(lambda a, b, impl=impl: codebook_search(a, b, impl=impl))
                try:
                    temp = fn.lower(*specs).compile().memory_analysis().temp_size_in_bytes
                    shown = f"{temp / 2**20:>10.1f}"
                except Exception as e:  # e.g. the naive matrix exceeds HBM
                    shown = f"{'fails: ' + type(e).__name__:>10}"
                print(
                    f"{shape:<6} {dname:<5} {impl:<12} {shown} {n * k * 4 / 2**20:>14.0f}",
                    flush=True,
                )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--shapes", default="A,B,C,small", help=f"subset of {list(SHAPES)}")
    parser.add_argument("--dtypes", default="bf16,f32", help="bf16, f32 or both")
    parser.add_argument("--reps", type=int, default=20, help="timed runs per path (>= 20)")
    parser.add_argument(
        "--interpret-max",
        type=int,
        default=2**22,
        help="largest N*K on which CPU runs the interpreted kernels",
    )
    parser.add_argument(
        "--tpu-aot", default=None, help="compile for this TPU topology (e.g. v5e:2x2) instead"
    )
    args = parser.parse_args(argv)
    bad = [s for s in args.shapes.split(",") if s not in SHAPES]
    bad += [t for t in args.dtypes.split(",") if t not in DTYPES]
    if bad:
        parser.error(f"unknown shape/dtype {bad}; shapes {list(SHAPES)}, dtypes {list(DTYPES)}")
    return run_tpu_aot(args) if args.tpu_aot else run_timed(args)


if __name__ == "__main__":
    main()
