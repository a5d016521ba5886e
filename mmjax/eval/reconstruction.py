"""`python -m mmjax.eval.reconstruction --tokenizer DIR --source ...`: encodes and decodes
images of a source's validation split through a `Tokenizer` bundle, batch by batch, and reports
PSNR, SSIM, MS-SSIM, LPIPS and rFID (the last two with weights files given), codebook usage and
perplexity as a table and as JSON (mmjax.eval.reconstruction_quality computes them)."""

import argparse
import sys
import time

import numpy as np

from mmjax.cli import run
from mmjax.data import ScenesSource, build_source
from mmjax.data.resize import center_box, center_crop_resize, resize_box
from mmjax.eval.reconstruction_quality import METRIC_KEYS, definitions, evaluate_tokenizer
from mmjax.storage import paths
from mmjax.tokenizers import Tokenizer

SOURCE_NAMES = ("scenes", "image_folder", "tfds", "array_record")
# Keys of a result that are not metrics.
INFO_KEYS = (
    "num_images", "tokenizer", "modality", "resolution", "codebook_size", "num_tokens",
    "source", "notes",
    "definitions", "seconds",
)  # fmt: skip


def _source(args, tokenizer):
    """The evaluated source of the command line and a description of it for the JSON: the
    split (scenes, tfds) or files (image_folder, array_record) named, or with
    --validation-fraction F their held-out part (the hash split that training with
    data.validation_fraction=F leaves out)."""
    name = args.source
    if name == "scenes":
        split = args.split or "validation"
        render = args.resolution or tokenizer.resolution
        source = ScenesSource(split, render, args.num)
        return source, {"source": name, "split": split, "resolution": render}
    fraction = args.validation_fraction
    config = {"source": name, "validation_fraction": fraction}
    if name == "image_folder":
        if not args.path:
            raise ValueError("--source image_folder needs --path (a directory or a glob)")
        config["path"] = args.path
    elif name == "tfds":
        if not args.tfds_name:
            raise ValueError("--source tfds needs --tfds-name (a TFDS dataset name)")
        config.update(tfds_name=args.tfds_name, split=args.split or "validation")
        config.update(data_dir=args.data_dir, image_key=args.image_key)
    elif name == "array_record":
        if not args.paths:
            raise ValueError("--source array_record needs --paths (files or glob patterns)")
        config["paths"] = list(args.paths)
    else:
        raise ValueError(f"--source must be one of {SOURCE_NAMES}, got {name!r}")
    source = build_source(config, "validation" if fraction > 0 else "all")
    return source, {**config, "part": "validation" if fraction > 0 else "all"}


def _fit(modality: str, size: int):
    """`fit(array, index)`: an example at `size` x `size` by the evaluation policy of
    mmjax.data.resize: the shorter side resized to `size` (rgb: antialiased bicubic; depth,
    normals, semseg: the nearest sample), then the centre crop; uint8 rgb is scaled to [0, 1]."""

    def fit(a, i):
        if modality == "rgb" and a.dtype == np.uint8:
            a = a.astype(np.float32) / 255.0
        if a.shape[:2] == (size, size):
            return a
        if modality == "rgb":
            return center_crop_resize(a, size)
        return resize_box(a, center_box(*a.shape[:2], size), size, nearest=True)

    return fit


def _load_weights(kind: str, path):
    """An LPIPS or FidInception from its .npz; a missing file is named with its flag."""
    if path is None:
        return None
    flag = f"--{kind}-weights"
    if not paths.exists(path):
        raise FileNotFoundError(f"{flag}: {path} does not exist")
    if kind == "lpips":
        from mmjax.eval.lpips import LPIPS

        return LPIPS.load(path)
    from mmjax.eval.fid import FidInception

    return FidInception.load(path)


def format_value(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def report(result: dict, out=None) -> None:
    """The result as a table: each metric, its value and what it means (or why it is absent)."""
    out = out or sys.stdout
    src = result["source"]
    where = src.get("path") or src.get("tfds_name") or ", ".join(src.get("paths", ()))
    part = src.get("split") or ("held-out part" if src.get("part") == "validation" else "")
    print(
        f"{result['tokenizer']} ({result['modality']}, {result['resolution']} px, "
        f"{result['codebook_size']} codes) on {result['num_images']} images of "
        f"{' '.join(filter(None, (src['source'], where, part)))}:",
        file=out,
    )
    extra = [k for k in result if k not in METRIC_KEYS and k not in INFO_KEYS]
    for key in (*METRIC_KEYS, *extra):
        value = result[key]
        why = result["notes"].get(key, "") if value is None else result["definitions"][key]
        print(f"  {key:11s} {format_value(value):>10s}  {why}", file=out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m mmjax.eval.reconstruction",
        description="Reconstruction quality of a tokenizer bundle: encodes and decodes images "
        "of a source's validation split at the tokenizer's resolution, in batches, and reports "
        "PSNR, SSIM, MS-SSIM, LPIPS and rFID (rgb; LPIPS and rFID with their weights files), "
        "codebook usage and perplexity (every modality), and the depth/normals/semseg "
        "metrics of mmjax.eval.reconstruction_metrics for those tokenizers.",
        epilog="JSON keys: psnr, ssim, ms_ssim, lpips, rfid, usage, perplexity (null where not "
        "computed, the reason under notes), num_images, tokenizer, modality, resolution, "
        "codebook_size, num_tokens, source, notes, definitions, seconds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--tokenizer",
        required=True,
        help="Tokenizer bundle directory (or a finished trainer workdir)",
    )
    p.add_argument(
        "--source", default="scenes", choices=SOURCE_NAMES, help="where images come from"
    )
    p.add_argument(
        "--split",
        default=None,
        help="scenes, tfds: the split evaluated (None: validation)",
    )
    p.add_argument("--num", type=int, default=10000, help="the first N images (all if fewer)")
    p.add_argument("--batch-size", type=int, default=64, help="images per encode/decode call")
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="scenes: render size; None: the tokenizer's (any other size is resized and "
        "centre-cropped to it, as every source's images are)",
    )
    p.add_argument("--path", default=None, help="image_folder: a directory or a glob")
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=0.0,
        help="image_folder, array_record, tfds: > 0 evaluates only the part that training "
        "with data.validation_fraction=F holds out (0: everything named)",
    )
    p.add_argument("--tfds-name", default=None, help="tfds: dataset name, e.g. imagenet2012")
    p.add_argument("--image-key", default="image", help="tfds: the image feature")
    p.add_argument("--data-dir", default=None, help="tfds: data directory (None: TFDS default)")
    p.add_argument("--paths", nargs="*", default=None, help="array_record: files or globs")
    p.add_argument("--lpips-weights", default=None, help="LPIPS .npz (mmjax.eval.lpips convert)")
    p.add_argument("--fid-weights", default=None, help="FID Inception .npz (mmjax.eval.fid)")
    p.add_argument(
        "--num-tokens",
        type=int,
        default=None,
        help="1D tokenizers: encode to the first k tokens and decode that prefix (None: all)",
    )
    p.add_argument("--json", default=None, help="write the result here (local or gs://)")
    p.add_argument("--workers", type=int, default=4, help="threads that load images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.num < 1 or args.batch_size < 1:
        p.error(f"--num and --batch-size must be >= 1, got {args.num} and {args.batch_size}")
    try:
        lpips = _load_weights("lpips", args.lpips_weights)
        fid = _load_weights("fid", args.fid_weights)
        tokenizer = Tokenizer.load(args.tokenizer)
        source, described = _source(args, tokenizer)
        start = time.perf_counter()
        metrics = evaluate_tokenizer(
            tokenizer, source, num=args.num, batch_size=args.batch_size, lpips=lpips, fid=fid,
            fit=_fit(tokenizer.modality, tokenizer.resolution), workers=args.workers,
            progress=not args.no_progress, num_tokens=args.num_tokens,
        )  # fmt: skip
    except (ValueError, KeyError, OSError, TypeError) as e:  # bad input, named
        p.error(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
    notes = metrics.pop("notes")
    result = {
        **metrics,
        "tokenizer": args.tokenizer,
        "modality": tokenizer.modality,
        "resolution": tokenizer.resolution,
        "codebook_size": tokenizer.codebook_size,
        "num_tokens": args.num_tokens,
        "source": described,
        "notes": notes,
        "definitions": {
            k: v for k, v in definitions(tokenizer.modality).items() if metrics.get(k) is not None
        },
        "seconds": time.perf_counter() - start,
    }
    report(result)
    if args.json:
        paths.write_json(args.json, result, indent=2)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    run(main, "python -m mmjax.eval.reconstruction")
