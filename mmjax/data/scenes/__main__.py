"""`python -m mmjax.data.scenes --out DIR --num N --split train [--resolution 64]`

Writes N scenes of a split to ArrayRecord shards under DIR (every modality of a scene in
one record) and a PNG contact sheet of the first few next to them.
"""

import argparse
import os
import time

from tqdm import tqdm

from mmjax.cli import run
from mmjax.data.records import write_records
from mmjax.data.scenes import SPLITS, generate, save_contact_sheet


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mmjax.data.scenes",
        description="Writes scenes of a split to ArrayRecord shards under --out (every "
        "modality of a scene in one record) and a PNG contact sheet of the first few beside "
        "them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--out", required=True, default=argparse.SUPPRESS, help="output directory (required)"
    )
    parser.add_argument(
        "--num", type=int, required=True, default=argparse.SUPPRESS, help="scenes (required)"
    )
    parser.add_argument("--split", default="train", choices=SPLITS, help="which scenes")
    parser.add_argument("--resolution", type=int, default=64, help="image size in pixels")
    parser.add_argument("--shards", type=int, default=1, help="ArrayRecord files to write")
    parser.add_argument("--start", type=int, default=0, help="first scene index")
    parser.add_argument("--overwrite", action="store_true", help="replace existing shards")
    parser.add_argument("--sheet", type=int, default=6, help="scenes in the contact sheet")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f"--num must be >= 1, got {args.num}")
    generate(args.start, args.split, args.resolution)  # bad resolution: fail before writing

    start = time.perf_counter()
    indices = range(args.start, args.start + args.num)
    scenes = (generate(i, args.split, args.resolution) for i in tqdm(indices, desc="scenes"))
    try:
        paths = write_records(
            scenes,
            args.out,
            f"scenes-{args.split}-{args.resolution}",
            args.shards,
            overwrite=args.overwrite,
        )
    except FileExistsError as e:
        parser.error(str(e))
    seconds = time.perf_counter() - start
    sheet = os.path.join(args.out, f"scenes-{args.split}-{args.resolution}.png")
    save_contact_sheet(
        sheet,
        indices=range(args.start, args.start + min(args.sheet, args.num)),
        split=args.split,
        resolution=args.resolution,
    )
    print(
        f"wrote {args.num} scenes ({args.num / seconds:.0f}/s) to {len(paths)} shard(s): "
        f"{paths[0]}{' ...' if len(paths) > 1 else ''}"
    )
    print(f"contact sheet: {sheet}")
    return paths


if __name__ == "__main__":
    run(main, "python -m mmjax.data.scenes")
