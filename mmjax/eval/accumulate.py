"""Streaming accumulators for reconstruction evaluation: per-image sums, running feature
moments for rFID and a token histogram, so that 10k+ images are scored batch by batch in
constant memory and the result does not depend on the batch size."""

import numpy as np

from mmjax.eval.image_metrics import psnr_per_image
from mmjax.eval.ssim import ms_ssim, ms_ssim_min_size, ssim
from mmjax.eval.token_stats import check_tokens, entropy_from_counts

# Above this many codes the histogram is kept sparse (a dict of the codes seen), not dense.
DENSE_HISTOGRAM_MAX_CODES = 2**24


class GaussianMoments:
    """Running mean and covariance (ddof=1, as pytorch-fid's np.cov) of feature vectors in
    float64, merged batch by batch with Chan et al.'s pairwise update: O(D^2) memory, and
    no catastrophic cancellation of a sum-of-squares formula."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, None, None  # m2: sum of centred outer products

    def update(self, features) -> None:
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or not len(f):
            raise ValueError(f"GaussianMoments: expected features [N>0, D], got {f.shape}")
        mean_b = f.mean(axis=0)
        centred = f - mean_b
        m2_b = centred.T @ centred
        if self.count == 0:
            self.count, self.mean, self.m2 = len(f), mean_b, m2_b
            return
        if f.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"GaussianMoments: features of dimension {f.shape[1]} after {self.mean.shape[0]}"
            )
        n_a, n_b = self.count, len(f)
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu [D], sigma [D, D]); needs at least 2 vectors."""
        if self.count < 2:
            raise ValueError(f"GaussianMoments: a covariance needs >= 2 vectors, has {self.count}")
        return self.mean, self.m2 / (self.count - 1)


class TokenHistogram:
    """Counts of each code over every token seen (all positions, and all levels of a
    residual quantizer, pooled). `usage`: the fraction of the codebook's
    codes hit at least once; `perplexity`: 2^H with H the plug-in entropy in bits of the
    token histogram (mmjax.eval.token_stats), i.e. the number of equally used codes with the
    same entropy (K when all K codes are used equally, 1 when one code is)."""

    def __init__(self, codebook_size: int):
        if codebook_size < 1:
            raise ValueError(f"TokenHistogram: codebook_size must be >= 1, got {codebook_size}")
        self.codebook_size = int(codebook_size)
        dense = self.codebook_size <= DENSE_HISTOGRAM_MAX_CODES
        self.counts = np.zeros(self.codebook_size, np.int64) if dense else {}

    def update(self, tokens) -> None:
        t = check_tokens(tokens, self.codebook_size, "TokenHistogram").reshape(-1)
        if isinstance(self.counts, np.ndarray):
            self.counts += np.bincount(t, minlength=self.codebook_size)
        else:
            for code, c in zip(*np.unique(t, return_counts=True), strict=True):
                self.counts[int(code)] = self.counts.get(int(code), 0) + int(c)

    def _nonzero(self) -> np.ndarray:
        c = self.counts
        return c[c > 0] if isinstance(c, np.ndarray) else np.fromiter(c.values(), np.int64)

    def usage(self) -> float:
        return float(len(self._nonzero()) / self.codebook_size)

    def perplexity(self) -> float:
        return float(2.0 ** entropy_from_counts(self._nonzero()))


def _pad_to(x: np.ndarray, size: int) -> np.ndarray:
    """x [B, ...] padded to `size` items by repeating its last one, so that a short last
    batch reuses the compiled shape (the padding's results are dropped)."""
    if len(x) >= size:
        return x
    return np.pad(x, [(0, size - len(x))] + [(0, 0)] * (x.ndim - 1), mode="edge")


def _per_image(fn, a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    """fn(a, b) -> [B], evaluated on the batch padded to `size`."""
    out = fn(_pad_to(a, size), _pad_to(b, size))
    return np.asarray(out, np.float64).reshape(-1)[: len(a)]


class ImageQualityAccumulator:
    """Batch-by-batch rgb reconstruction quality: mean per-image PSNR, SSIM and MS-SSIM
    (mmjax.eval.ssim; MS-SSIM only when the images are at least `ms_ssim_min_size()` pixels),
    mean LPIPS (with an `LPIPS` object) and rFID (with a `FidInception`: the Frechet distance
    between the Inception features of the references and of the reconstructions).

    Images are float [B, H, W, 3] in [0, 1]. `result()` gives every key, None where a metric
    was not computed, with the reason in `notes`."""

    def __init__(self, *, lpips=None, fid=None):
        self.lpips, self.fid = lpips, fid
        self.count, self.size, self.shape = 0, None, None
        self.sums = {"psnr": 0.0, "ssim": 0.0, "ms_ssim": 0.0, "lpips": 0.0}
        self.ref_moments, self.rec_moments = GaussianMoments(), GaussianMoments()

    def update(self, reference, reconstruction) -> None:
        ref = np.asarray(reference, np.float32)
        rec = np.asarray(reconstruction, np.float32)
        if ref.shape != rec.shape or ref.ndim != 4 or ref.shape[-1] != 3:
            raise ValueError(
                "ImageQualityAccumulator: expected reference and reconstruction rgb batches "
                f"[B, H, W, 3] of one shape, got {ref.shape} and {rec.shape}"
            )
        if self.shape is not None and ref.shape[1:] != self.shape:
            raise ValueError(
                f"ImageQualityAccumulator: images of {ref.shape[1:]} after {self.shape}"
            )
        self.shape, self.size = ref.shape[1:], self.size or len(ref)
        s = self.sums
        s["psnr"] += float(np.sum(psnr_per_image(ref, rec)))
        s["ssim"] += float(np.sum(_per_image(ssim, ref, rec, self.size)))
        if self._has_ms_ssim():
            s["ms_ssim"] += float(np.sum(_per_image(ms_ssim, ref, rec, self.size)))
        if self.lpips is not None:
            s["lpips"] += float(np.sum(_per_image(self.lpips, ref, rec, self.size)))
        if self.fid is not None:
            for moments, x in ((self.ref_moments, ref), (self.rec_moments, rec)):
                moments.update(self.fid.features(_pad_to(x, self.size))[: len(x)])
        self.count += len(ref)

    def _has_ms_ssim(self) -> bool:
        return min(self.shape[:2]) >= ms_ssim_min_size()

    def result(self) -> dict:
        if not self.count:
            raise ValueError("ImageQualityAccumulator: no images were added")
        n, s, notes = self.count, self.sums, {}
        out = {"psnr": s["psnr"] / n, "ssim": s["ssim"] / n, "ms_ssim": None, "lpips": None}
        if self._has_ms_ssim():
            out["ms_ssim"] = s["ms_ssim"] / n
        else:
            notes["ms_ssim"] = (
                f"needs images of at least {ms_ssim_min_size()} px, these are "
                f"{self.shape[0]}x{self.shape[1]}"
            )
        if self.lpips is not None:
            out["lpips"] = s["lpips"] / n
        else:
            notes["lpips"] = "no LPIPS weights given (--lpips-weights)"
        out["rfid"] = None
        if self.fid is None:
            notes["rfid"] = "no Inception weights given (--fid-weights)"
        elif n < 2:
            notes["rfid"] = f"needs at least 2 images, got {n}"
        else:
            mu1, s1 = self.ref_moments.statistics()
            mu2, s2 = self.rec_moments.statistics()
            # imported here: mmjax.eval imports this module, and `python -m mmjax.eval.fid`
            # must find mmjax.eval.fid not yet imported
            from mmjax.eval.fid import frechet_distance

            out["rfid"] = float(frechet_distance(mu1, s1, mu2, s2))
        return {**out, "num_images": n, "notes": notes}


class BatchMean:
    """The mean over batches of a dict of scalar metrics, weighted by each batch's image
    count (for metrics such as mIoU that are defined on a batch, not per image)."""

    def __init__(self):
        self.count, self.sums = 0, {}

    def update(self, metrics: dict, count: int) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * count
        self.count += count

    def result(self) -> dict:
        return {k: v / self.count for k, v in self.sums.items()}
