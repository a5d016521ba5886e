"""An rgb tokenizer trained on a folder of real photographs, scored on held-out photographs:
PSNR and codebook usage, against JPEG at the same bytes per image.

    python benchmarks/tokenizer_photos.py --workdir /tmp/tok_photos --steps 1500

The photographs are scikit-image's (`skimage.data`, shipped with the package, no download),
cut into 64 px crops written as PNG files: training crops (stride --stride) from TRAIN, held-out
crops (stride 64, no overlap) from HELD_OUT, photographs the tokenizer never sees. Training
reads the folder through `data.source=image_folder` with `data.eval_path` = the held-out folder,
so the run's own evaluation is on the held-out photographs too.

Bytes per image: the tokenizer's grid of codes at log2(K) bits each (no entropy coding), and the
empirical-entropy bound of the same tokens. JPEG (Pillow, 4:2:0, optimized Huffman tables) at,
per image, the highest quality whose size fits the token bytes: counting the whole file, and
counting only the entropy-coded scan (the headers and tables, about 300 bytes, are the same
for every image, as a tokenizer's codebook is). Prints a table; --json writes the numbers.
"""

import argparse
import io
import json
import math
import os
import platform
import time

import numpy as np
from PIL import Image

from mmjax.eval.image_metrics import psnr
from mmjax.eval.ssim import mean_ssim
from mmjax.eval.token_stats import entropy_from_counts

# The colour photographs of skimage.data (its grayscale ones would teach a colour-blind code).
TRAIN = ("astronaut", "rocket", "coffee", "hubble_deep_field", "immunohistochemistry")
HELD_OUT = ("chelsea",)
SIDE = 64


def photo(name: str) -> np.ndarray:
    from skimage import data

    a = np.asarray(getattr(data, name)())
    a = (a.astype(np.uint8) * 255) if a.dtype == bool else a.astype(np.uint8)
    return np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]


def write_crops(names, out: str, stride: int) -> int:
    os.makedirs(out, exist_ok=True)
    n = 0
    for name in names:
        a = photo(name)
        for top in range(0, a.shape[0] - SIDE + 1, stride):
            for left in range(0, a.shape[1] - SIDE + 1, stride):
                crop = a[top : top + SIDE, left : left + SIDE]
                Image.fromarray(crop).save(os.path.join(out, f"{name}_{top:04d}_{left:04d}.png"))
                n += 1
    return n


def jpeg(a: np.ndarray, quality: int) -> tuple[bytes, int]:
    """(file bytes, entropy-coded scan bytes) of a baseline JPEG."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality, optimize=True, subsampling="4:2:0")
    data = buf.getvalue()
    sos = data.index(b"\xff\xda")
    header = int.from_bytes(data[sos + 2 : sos + 4], "big")
    return data, len(data) - (sos + 2 + header) - 2  # minus the EOI marker


def decode_jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32) / 255.0


def jpeg_at_budget(a: np.ndarray, budget: float, scan_only: bool):
    """(decoded, quality, file bytes, scan bytes) at the highest quality within `budget`
    bytes (quality 1 when none is)."""
    best = None
    for q in range(1, 96):
        data, scan = jpeg(a, q)
        size = scan if scan_only else len(data)
        if best is None or size <= budget:
            best = (data, q, len(data), scan)
        if size > budget:
            break
    data, q, size, scan = best
    return decode_jpeg(data), q, size, scan


def train(args, train_dir: str, held_dir: str) -> str:
    from mmjax.configs import load
    from mmjax.train.tokenizer_trainer import TokenizerTrainer

    c = load("tokenizer_rgb", f"quantizer={args.quantizer},size={args.size}")
    c.data.update(source="image_folder", path=train_dir, eval_path=held_dir)
    c.data.update(resolution=SIDE, batch_size=args.batch_size, worker_count=args.workers)
    c.total_steps, c.log_every = args.steps, max(args.steps // 20, 1)
    c.eval.every = c.checkpoint.every = args.steps
    c.eval.usage_images = 0
    c.optimizer.warmup_steps = min(200, args.steps // 10)
    c.optimizer.learning_rate = args.learning_rate
    workdir = os.path.join(args.workdir, "run")
    TokenizerTrainer(c, workdir).run()
    return workdir


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--workdir", required=True, help="photo crops, the run and its bundle")
    p.add_argument("--steps", type=int, default=1500, help="training steps")
    p.add_argument("--batch-size", type=int, default=32, help="training batch")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--quantizer", default="fsq", help="configs/tokenizer_rgb.py quantizer=")
    p.add_argument("--size", default="tiny", help="configs/tokenizer_rgb.py size=")
    p.add_argument("--stride", type=int, default=32, help="training crops' stride (px)")
    p.add_argument("--workers", type=int, default=0, help="Grain worker processes")
    p.add_argument("--json", default="", help="numbers to this file (default: %(default)r: none)")
    args = p.parse_args(argv)

    from mmjax.data import ImageFolderSource
    from mmjax.tokenizers import Tokenizer

    train_dir = os.path.join(args.workdir, "photos", "train")
    held_dir = os.path.join(args.workdir, "photos", "held_out")
    n_train = write_crops(TRAIN, train_dir, args.stride)
    n_held = write_crops(HELD_OUT, held_dir, SIDE)
    start = time.perf_counter()
    workdir = train(args, train_dir, held_dir)
    seconds = time.perf_counter() - start

    tok = Tokenizer.load(workdir)
    held = ImageFolderSource(held_dir)
    images = np.stack([held.read(i) for i in range(len(held))])  # 64 x 64: no resize
    tokens = np.concatenate(
        [np.asarray(tok.encode(images[i : i + 64])) for i in range(0, len(images), 64)]
    )
    recon = np.concatenate(
        [
            np.clip(np.asarray(tok.decode(tokens[i : i + 64])), 0, 1)
            for i in range(0, len(tokens), 64)
        ]
    )
    k = int(tok.codebook_size)
    counts = np.bincount(tokens.reshape(-1), minlength=k)
    entropy_bits = entropy_from_counts(counts)
    per_image = int(np.prod(tokens.shape[1:]))
    token_bytes = per_image * math.log2(k) / 8
    entropy_bytes = per_image * entropy_bits / 8

    uint8 = np.round(images * 255).astype(np.uint8)
    quality = dict(psnr=psnr(recon, images), ssim=mean_ssim(images, recon))
    rows = {"tokenizer": dict(bytes=token_bytes, **quality)}
    rows["tokenizer (entropy bound)"] = dict(bytes=entropy_bytes, **quality)
    for label, budget, scan_only in (
        ("JPEG, whole file <= token bytes", token_bytes, False),
        ("JPEG, scan only <= token bytes", token_bytes, True),
        ("JPEG, scan only <= entropy bound", entropy_bytes, True),
    ):
        out = [jpeg_at_budget(a, budget, scan_only) for a in uint8]
        decoded = np.stack([o[0] for o in out])
        rows[label] = dict(
            bytes=float(np.mean([o[3] if scan_only else o[2] for o in out])),
            file_bytes=float(np.mean([o[2] for o in out])),
            quality=float(np.mean([o[1] for o in out])),
            over_budget=int(sum((o[3] if scan_only else o[2]) > budget for o in out)),
            psnr=psnr(decoded, images),
            ssim=mean_ssim(images, decoded),
        )
    result = dict(
        command="python benchmarks/tokenizer_photos.py " + " ".join(argv or os.sys.argv[1:]),
        machine=platform.processor() or platform.machine(),
        date=time.strftime("%Y-%m-%d"),
        train_photos=list(TRAIN), held_out_photos=list(HELD_OUT),
        train_crops=n_train, held_out_crops=n_held, steps=args.steps,
        batch_size=args.batch_size, train_seconds=round(seconds, 1),
        codebook_size=k, grid=list(tok.grid_shape),
        codebook_usage=float(np.count_nonzero(counts) / k),
        codebook_perplexity=float(2**entropy_bits), rows=rows,
    )  # fmt: skip
    print(
        f"{n_train} training crops of {len(TRAIN)} photographs, {n_held} held-out crops of "
        f"{', '.join(HELD_OUT)}; {args.steps} steps in {seconds:.0f}s"
    )
    print(
        f"codebook usage on held-out crops {result['codebook_usage']:.3f} of {k} codes, "
        f"perplexity {result['codebook_perplexity']:.1f}"
    )
    print(f"{'':36s} {'bytes/img':>9s} {'PSNR dB':>8s} {'SSIM':>6s} {'quality':>8s} {'over':>5s}")
    for name, r in rows.items():
        q = f"{r['quality']:.1f}" if "quality" in r else "-"
        over = str(r.get("over_budget", "-"))
        print(f"{name:36s} {r['bytes']:9.1f} {r['psnr']:8.2f} {r['ssim']:6.3f} {q:>8s} {over:>5s}")
    ref = rows["JPEG, scan only <= token bytes"]["psnr"]
    print(f"tokenizer - JPEG (scan only, same bytes): {rows['tokenizer']['psnr'] - ref:+.2f} dB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
