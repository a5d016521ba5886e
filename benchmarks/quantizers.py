"""VQ forward+backward throughput per search path, and the search's temporary memory.

    python benchmarks/quantizers.py            # N=16384 tokens, D=32, K in {1024, 16384, 65536}
    python benchmarks/quantizers.py --quick    # small shapes, seconds

For each K and each `codebook_search` path (`xla`: full N x K distance matrix;
`xla_chunked`: running min over codebook chunks) it times one training step of an EMA
VectorQuantizer (forward, EMA update, backward to the input) and reads the compiled
temporary memory from XLA's memory analysis. In the same run it times the same step in
vector-quantize-pytorch (`pip install -e .[bench]`), when installed. Ratios are against
the `xla` path and against vector-quantize-pytorch measured in this run.
"""

import argparse
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from mmjax.kernels import codebook_search
from mmjax.quantizers import STATS, VectorQuantizer

MiB = 2**20


def time_fn(fn, reps: int) -> float:
    """Median wall time of `fn()` (which must block) over `reps` runs after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mmjax_step(n, k, d, impl, block_k):
    q = VectorQuantizer(k, d, update="ema", search_impl=impl, search_block_k=block_k)
    z = jax.random.normal(jax.random.key(0), (n, d))
    w = jax.random.normal(jax.random.key(1), (n, d))
    variables = q.init(jax.random.key(2), z[:1])

    @jax.jit
    def step(variables, z, w):
        def loss_fn(z_):
            out, new = q.apply(variables, z_, train=True, mutable=[STATS])
            return jnp.sum(out.quantized * w) + out.loss, new

        return jax.grad(loss_fn, has_aux=True)(z)

    search = jax.jit(lambda x, c: codebook_search(x, c, impl=impl, block_k=block_k))
    cb = variables[STATS]["codebook"]
    search_temp = search.lower(z, cb).compile().memory_analysis().temp_size_in_bytes
    step_temp = step.lower(variables, z, w).compile().memory_analysis().temp_size_in_bytes
    run = lambda: jax.block_until_ready(step(variables, z, w))
    return run, search_temp, step_temp


def torch_step(n, k, d):
    try:
        import torch
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:
        return None
    torch.manual_seed(0)
    vq = VectorQuantize(dim=d, codebook_size=k, decay=0.99, commitment_weight=0.25).train()
    z = torch.randn(1, n, d, requires_grad=True)
    w = torch.randn(1, n, d)

    def run():
        z.grad = None
        quantized, _, loss = vq(z)
        ((quantized * w).sum() + loss.sum()).backward()

    return run


def torch_time(n, k, d, reps, memory_gib):
    """Times vector-quantize-pytorch in a child process capped at `memory_gib` of address
    space, so that a shape it cannot hold fails alone. Returns (seconds or None, note)."""

    cmd = [
        sys.executable,
        __file__,
        "--torch-only",
        "--tokens",
        str(n),
        "--dim",
        str(d),
        "--codebook-sizes",
        str(k),
        "--reps",
        str(reps),
        "--torch-memory-gib",
        str(memory_gib),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("torch_seconds="):
            return float(line.split("=")[1]), ""
        if line.startswith("torch_missing"):
            return None, "not installed (pip install -e .[bench])"
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
    if "memory" in proc.stderr.lower():
        return None, f"out of memory under a {memory_gib:g} GiB cap"
    return None, f"failed: {tail[:80]}"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    parser.add_argument("--tokens", type=int, default=16384, help="N: vectors quantized")
    parser.add_argument("--dim", type=int, default=32, help="D: vector and code width")
    parser.add_argument(
        "--codebook-sizes", default="1024,16384,65536", help="comma-separated K values"
    )
    parser.add_argument(
        "--block-k", type=int, default=None, help="xla_chunked block size (None: automatic)"
    )
    parser.add_argument("--reps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument(
        "--torch-memory-gib",
        type=float,
        default=16.0,
        help="address-space cap of the vector-quantize-pytorch child process",
    )
    parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_only:
        limit = int(args.torch_memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        run = torch_step(args.tokens, int(args.codebook_sizes), args.dim)
        print("torch_missing" if run is None else f"torch_seconds={time_fn(run, args.reps)}")
        return None
    n, d = (1024, 16) if args.quick else (args.tokens, args.dim)
    sizes = [64, 512] if args.quick else [int(s) for s in args.codebook_sizes.split(",")]
    reps = 2 if args.quick else args.reps

    print(
        f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), jax "
        f"{jax.__version__}; VQ-EMA train step (fwd + EMA update + bwd), N={n}, D={d}"
    )
    header = (
        f"{'K':>7} {'impl':<22} {'ms/step':>9} {'ktok/s':>8} {'search temp MiB':>16} "
        f"{'step temp MiB':>14} {'time vs xla':>12} {'mem vs xla':>11} {'speed vs torch':>15}"
    )
    print(header)
    rows = []
    for k in sizes:
        reps_k = max(2, reps // 2) if n * k > 2**29 else reps
        base_t = base_mem = None
        t_torch, torch_note = torch_time(n, k, d, reps_k, args.torch_memory_gib)
        for impl in ("xla", "xla_chunked"):
            run, search_temp, step_temp = mmjax_step(n, k, d, impl, args.block_k)
            t = time_fn(run, reps_k)
            base_t = base_t or t
            base_mem = base_mem or search_temp
            row = dict(
                k=k,
                impl=impl,
                ms=t * 1e3,
                tok_s=n / t,
                search_mib=search_temp / MiB,
                step_mib=step_temp / MiB,
                time_ratio=t / base_t,
                mem_ratio=search_temp / max(base_mem, 1),
                vs_torch=(t_torch / t) if t_torch else float("nan"),
            )
            rows.append(row)
            print(
                f"{k:>7} {'mmjax ' + impl:<22} {row['ms']:>9.1f} {row['tok_s'] / 1e3:>8.1f} "
                f"{row['search_mib']:>16.1f} {row['step_mib']:>14.1f} "
                f"{row['time_ratio']:>12.2f} {row['mem_ratio']:>11.3f} "
                f"{row['vs_torch']:>14.2f}x",
                flush=True,
            )
        if t_torch:
            print(
                f"{k:>7} {'vector-quantize-pytorch':<22} {t_torch * 1e3:>9.1f} "
                f"{n / t_torch / 1e3:>8.1f} {'':>16} {'':>14} {t_torch / base_t:>12.2f}",
                flush=True,
            )
        else:
            print(f"{k:>7} vector-quantize-pytorch: {torch_note}")
    return rows


if __name__ == "__main__":
    main()
