"""Reconstruction quality of tokenizers: `reconstruction_metrics` (any modality) and
`image_quality_metrics` (rgb) score arrays in memory, as the tokenizer trainer does;
`evaluate_tokenizer` streams a source through a `Tokenizer` in batches and accumulates the same
metrics plus codebook usage and perplexity (`python -m mmjax.eval.reconstruction` runs it).
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mmjax.eval.accumulate import BatchMean, ImageQualityAccumulator, TokenHistogram
from mmjax.eval.dense_metrics import depth_errors, normals_angular_error, semseg_miou
from mmjax.eval.image_metrics import psnr

# The keys every result has (None where a metric does not apply or was not asked for).
METRIC_KEYS = ("psnr", "ssim", "ms_ssim", "lpips", "rfid", "usage", "perplexity")
_BATCH_MEAN = "; reconstruction_metrics of each batch, averaged weighted by batch size"
DEFINITIONS = {
    "psnr": "dB, mean over images of per-image PSNR (max value 1)",
    "ssim": "mean over images; 11x11 Gaussian window (sigma 1.5), mmjax.eval.ssim",
    "ms_ssim": "mean over images; 5 scales, images of at least 176 px",
    "lpips": "mean over images of the LPIPS distance",
    "rfid": "Frechet distance between Inception pool features of references and reconstructions",
    "usage": "fraction of the codebook's codes used by the tokens of all evaluated images",
    "perplexity": "2^H, H the entropy in bits of the token histogram over all evaluated images",
}
DENSE_DEFINITIONS = {
    "psnr": "dB, all pixels of a batch, depth / the batch's max depth" + _BATCH_MEAN,
    "abs_err": "mean |depth error| on hit pixels" + _BATCH_MEAN,
    "angle_deg": "mean angle between normals on hit pixels, degrees" + _BATCH_MEAN,
    "pixel_acc": "fraction of pixels of the right class" + _BATCH_MEAN,
    "miou": "mean IoU over the classes present" + _BATCH_MEAN,
}


def definitions(modality: str) -> dict:
    """What each metric of a `modality` tokenizer's result means."""
    return {**DEFINITIONS, **(DENSE_DEFINITIONS if modality != "rgb" else {})}


def reconstruction_metrics(modality: str, target, recon) -> dict:
    """rgb: PSNR (dB); depth: PSNR on depth / max depth and mean absolute error on hit
    pixels; normals: mean angular error (degrees) on hit pixels; semseg: pixel accuracy and
    mean IoU over the classes present in the target or the reconstruction. Depth, normals and
    semseg use mmjax.eval.dense_metrics; with no hit pixel, abs_err and angle_deg are 0."""
    t, r = np.asarray(target), np.asarray(recon)
    if modality == "rgb":
        return {"psnr": psnr(t, np.clip(r, 0, 1))}
    if modality == "depth":
        scale = max(float(t.max()), 1e-6)
        hit = t > 0
        return {
            "psnr": psnr(t / scale, np.clip(r / scale, 0, 1)),
            "abs_err": depth_errors(r, t)["mae"] if hit.any() else 0.0,
        }
    if modality == "normals":
        hit = np.linalg.norm(t, axis=-1) > 0.5
        return {"angle_deg": normals_angular_error(r, t)["mean"] if hit.any() else 0.0}
    if modality == "semseg":
        num_classes = int(max(t.max(), r.max())) + 1 if t.size else 1
        out = semseg_miou(r, t, num_classes)
        return {"pixel_acc": out["pixel_accuracy"], "miou": out["miou"]}
    raise ValueError(f"reconstruction_metrics: unknown modality {modality!r}")


def image_quality_metrics(reference, reconstruction, *, lpips=None, fid=None) -> dict:
    """PSNR (mean of per-image PSNRs), SSIM, MS-SSIM, LPIPS (with an `LPIPS` object) and rFID
    (with a `FidInception`) of one rgb batch [B, H, W, 3] in [0, 1]: `psnr`, `ssim`,
    `ms_ssim`, `lpips`, `rfid` (None where not computed) and `num_images`, the numbers the
    CLI gives for the same images."""
    acc = ImageQualityAccumulator(lpips=lpips, fid=fid)
    acc.update(reference, reconstruction)
    out = acc.result()
    out.pop("notes")
    return out


def _batches(source, modality: str, num: int, batch_size: int, fit, workers: int):
    """Stacked [B, ...] arrays of `modality` for examples 0..num-1, each passed through
    `fit(array, index)`; the next batch loads in worker threads while this one is scored."""

    def load(i):
        return fit(np.asarray(source[i][modality]), i)

    chunks = [range(k, min(k + batch_size, num)) for k in range(0, num, batch_size)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending = [pool.submit(load, i) for i in chunks[0]] if chunks else []
        for k in range(len(chunks)):
            batch = [f.result() for f in pending]
            if k + 1 < len(chunks):
                pending = [pool.submit(load, i) for i in chunks[k + 1]]
            yield np.stack(batch)


def evaluate_tokenizer(
    tokenizer,
    source,
    *,
    num=None,
    batch_size=64,
    lpips=None,
    fid=None,
    fit=None,
    workers=4,
    progress=False,
    num_tokens=None,
) -> dict:
    """Reconstruction metrics of `tokenizer` on the first `num` examples of `source` (all when
    None or more than it holds), in batches of `batch_size` (the last one padded, so every
    call of the jitted encode/decode has one shape). `fit(array, index)` brings an example to
    the tokenizer's resolution (default: it must already be there). `num_tokens` (1D
    tokenizers only) encodes each image to its first k tokens and decodes that prefix.

    Returns METRIC_KEYS (None where not computed, with the reason in `notes`), the
    modality's reconstruction_metrics for depth/normals/semseg, `num_images` and `notes`."""
    from tqdm import tqdm

    modality, size = tokenizer.modality, tokenizer.resolution
    n = len(source) if num is None else min(int(num), len(source))
    if n < 1 or batch_size < 1:
        raise ValueError(
            f"evaluate_tokenizer: need num >= 1 and batch_size >= 1, got {n}, {batch_size}"
        )
    first = source[0]
    if modality not in first:
        raise KeyError(
            f"the source's examples have no {modality!r} (they have {sorted(first)}); the "
            f"tokenizer is a {modality} tokenizer"
        )
    fit = fit or (lambda a, i: a)
    images = ImageQualityAccumulator(lpips=lpips, fid=fid) if modality == "rgb" else None
    dense, hist = BatchMean(), TokenHistogram(tokenizer.codebook_size)
    batches = _batches(source, modality, n, batch_size, fit, workers)
    for raw in tqdm(batches, total=-(-n // batch_size), disable=not progress, unit="batch"):
        if raw.shape[1:3] != (size, size):
            raise ValueError(f"{modality} images are {raw.shape[1:3]}, the tokenizer takes {size}")
        count = len(raw)
        padded = np.pad(raw, [(0, batch_size - count)] + [(0, 0)] * (raw.ndim - 1), "edge")
        tokens = tokenizer.encode(padded, num_tokens=num_tokens)
        recon = np.asarray(tokenizer.decode(tokens))[:count]
        hist.update(np.asarray(tokens)[:count])
        if images is not None:
            images.update(raw, recon)
        else:
            dense.update(reconstruction_metrics(modality, raw, recon), count)
    out = dict.fromkeys(METRIC_KEYS)
    notes = {}
    if images is not None:
        found = images.result()
        notes = found.pop("notes")
        out.update(found)
    else:
        out.update(dense.result())
        for k in ("ssim", "ms_ssim", "lpips", "rfid"):
            notes[k] = "rgb tokenizers only"
        if out["psnr"] is None:
            notes["psnr"] = f"not defined for {modality}"
    out.update(usage=hist.usage(), perplexity=hist.perplexity(), num_images=n, notes=notes)
    return out
