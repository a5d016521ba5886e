"""Scenes generated per second per core, and the end-to-end Grain pipeline throughput.

    python benchmarks/data_pipeline.py            # 64 and 128 px; pipeline with 0 and 2 workers
    python benchmarks/data_pipeline.py --quick

The pipeline is the training one: seeded shuffle, host shard, aligned random crop + flip,
batching (batch 32), optional worker processes. Until the tiny 4M step exists, the target
(the pipeline delivers >= 2x what that step consumes) is reported as raw numbers.
"""

import argparse
import time

from mmjax.data import RandomCropFlip, ScenesSource, build_dataset, make_iterator
from mmjax.data.scenes import generate


def scenes_per_second(resolution: int, n: int) -> float:
    generate(0, "train", resolution)  # warm caches
    start = time.perf_counter()
    for i in range(n):
        generate(i, "train", resolution)
    return n / (time.perf_counter() - start)


def pipeline_examples_per_second(resolution, workers, batches, batch_size=32) -> float:
    ds = build_dataset(
        ScenesSource("train", resolution, num_examples=100_000),
        batch_size=batch_size,
        seed=0,
        transform=RandomCropFlip(crop_size=resolution * 7 // 8, flip_prob=0.5),
    )
    it = make_iterator(ds, worker_count=workers, prefetch=4)
    next(it)  # start-up (worker processes) is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer scenes and batches")
    parser.add_argument("--resolutions", default="64,128", help="comma-separated image sizes")
    parser.add_argument("--workers", default="0,2", help="comma-separated Grain worker counts")
    args = parser.parse_args(argv)
    n, batches = (20, 2) if args.quick else (300, 20)
    print(f"{'resolution':>10} {'scenes/s/core':>14}")
    for r in [int(v) for v in args.resolutions.split(",")]:
        print(f"{r:>10} {scenes_per_second(r, n if r <= 64 else n // 2):>14.1f}", flush=True)
    print(f"{'resolution':>10} {'workers':>8} {'examples/s':>11}")
    for r in [int(v) for v in args.resolutions.split(",")]:
        for w in [int(v) for v in args.workers.split(",")]:
            eps = pipeline_examples_per_second(r, w, batches)
            print(f"{r:>10} {w:>8} {eps:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
