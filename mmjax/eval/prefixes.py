"""`python -m mmjax.eval.prefixes --tokenizer DIR [--reference DIR ...]`: reconstruction
quality of a flexible-length 1D tokenizer against the number of kept tokens k (every power
of two up to its K, and K), on validation scenes, next to 2D tokenizers at their fixed grids;
a table, a JSON and a PNG of the same scenes decoded from k = 1, 2, 4, ... tokens.

Each k encodes the images to their first k tokens and decodes that prefix
(`Tokenizer.encode(images, num_tokens=k)`), scored as `mmjax.eval.reconstruction` scores a
tokenizer (PSNR, SSIM, MS-SSIM; usage and perplexity of the k tokens).
"""

import argparse
import sys

import numpy as np

from mmjax.cli import run
from mmjax.data import ScenesSource
from mmjax.eval.grid import save_image_grid
from mmjax.eval.reconstruction import format_value
from mmjax.eval.reconstruction_quality import evaluate_tokenizer
from mmjax.storage import paths
from mmjax.tokenizers import Tokenizer

COLUMNS = ("psnr", "ssim", "ms_ssim", "usage", "perplexity")


def prefix_lengths(max_tokens: int) -> list[int]:
    """1, 2, 4, ... below max_tokens, then max_tokens."""
    return [2**i for i in range(max_tokens.bit_length()) if 2**i < max_tokens] + [max_tokens]


def _row(tokenizer, source, num, batch_size, num_tokens, tokens_per_image) -> dict:
    found = evaluate_tokenizer(
        tokenizer, source, num=num, batch_size=batch_size, num_tokens=num_tokens
    )
    return {"num_tokens": tokens_per_image, **{k: found[k] for k in COLUMNS}}


def _reconstruct(tokenizer, images, num_tokens=None) -> np.ndarray:
    return np.asarray(tokenizer.decode(tokenizer.encode(images, num_tokens=num_tokens)))


def report(result: dict, out=None) -> None:
    out = out or sys.stdout
    print(f"{result['tokenizer']} on {result['num_images']} validation scenes:", file=out)
    print(f"  {'tokens':>6s} " + " ".join(f"{c:>10s}" for c in COLUMNS), file=out)
    for row in (*result["prefixes"], *result["references"]):
        values = " ".join(f"{format_value(row[c]):>10s}" for c in COLUMNS)
        where = f"  2D {row['tokenizer']}" if "tokenizer" in row else ""
        print(f"  {row['num_tokens']:6d} {values}{where}", file=out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m mmjax.eval.prefixes",
        description="PSNR, SSIM, MS-SSIM, usage and perplexity of a 1D tokenizer from its "
        "first k tokens, k = 1, 2, 4, ... up to all of them, on validation scenes at the "
        "tokenizer's resolution; 2D tokenizers (--reference) scored beside it at their grids.",
        epilog="JSON: tokenizer, num_images, prefixes (one row per k: num_tokens and the "
        "metrics), references (one row per 2D tokenizer: tokenizer, num_tokens, metrics).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--tokenizer", required=True, help="a 1D tokenizer bundle (or its workdir)")
    p.add_argument("--reference", nargs="*", default=(), help="2D tokenizer bundles to compare")
    p.add_argument("--num", type=int, default=256, help="validation scenes scored")
    p.add_argument("--batch-size", type=int, default=64, help="images per encode/decode call")
    p.add_argument("--out", default=None, help="PNG: scenes decoded from each k (local/gs://)")
    p.add_argument("--show", type=int, default=6, help="scenes in the PNG")
    p.add_argument("--json", default=None, help="write the result here (local or gs://)")
    args = p.parse_args(argv)
    if args.num < 1 or args.batch_size < 1 or args.show < 1:
        p.error("--num, --batch-size and --show must be >= 1")
    try:
        tok = Tokenizer.load(args.tokenizer)
        if tok.max_tokens is None:
            raise ValueError(
                f"--tokenizer {args.tokenizer} is a 2D tokenizer ({tok.grid_shape} grid); "
                "name it with --reference and a 1D tokenizer with --tokenizer"
            )
        refs = {path: Tokenizer.load(path) for path in args.reference}
        for path, ref in refs.items():
            if ref.max_tokens is not None or ref.resolution != tok.resolution:
                raise ValueError(
                    f"--reference {path} must be a 2D tokenizer at {tok.resolution} px, got "
                    f"grid {ref.grid_shape} at {ref.resolution} px"
                )
        source = ScenesSource("validation", tok.resolution, args.num)
        ks = prefix_lengths(tok.max_tokens)
        rows = [_row(tok, source, args.num, args.batch_size, k, k) for k in ks]
        ref_rows = [
            {"tokenizer": path, **_row(ref, source, args.num, args.batch_size, None,
                                       int(np.prod(ref.grid_shape)))}
            for path, ref in refs.items()
        ]  # fmt: skip
    except (ValueError, KeyError, OSError) as e:  # bad input, named
        p.error(str(e))
    result = {
        "tokenizer": args.tokenizer,
        "num_images": min(args.num, len(source)),
        "prefixes": rows,
        "references": ref_rows,
    }
    report(result)
    if args.out:
        images = np.stack([source[i]["rgb"] for i in range(min(args.show, len(source)))])
        columns = [_reconstruct(tok, images, k) for k in ks]
        columns += [_reconstruct(ref, images) for ref in refs.values()]
        headers = ["image", *(f"k={k}" for k in ks)]
        headers += [f"2D {int(np.prod(r.grid_shape))}" for r in refs.values()]
        grid = [[images[i], *(c[i] for c in columns)] for i in range(len(images))]
        save_image_grid(grid, args.out, scale=3, columns=headers)
        print(f"wrote {args.out}")
    if args.json:
        paths.write_json(args.json, result, indent=2)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    run(main, "python -m mmjax.eval.prefixes")
