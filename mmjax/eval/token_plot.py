"""The rank-frequency plot of a token histogram: empirical frequencies against the fitted
Zipf law, log-log, drawn with Pillow (no plotting library needed)."""

import io
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmjax.eval.token_stats import rank_frequency, zipf_pmf
from mmjax.storage import paths

WIDTH, HEIGHT = 760, 540
LEFT, RIGHT, TOP, BOTTOM = 86, 24, 52, 64  # plot-area margins (px)
EMPIRICAL, FIT, GRID, AXIS = (31, 119, 180), (230, 110, 20), (226, 226, 226), (40, 40, 40)
MAX_POINTS = 4000  # ranks drawn (geometrically spaced) for very large codebooks


def _font(size: int):
    return ImageFont.load_default(size=size)


def _tick_label(d: int, m: int) -> str:
    """The value m x 10^d as a short label."""
    v = m * 10.0**d
    if 1 <= v < 1e5:
        return f"{round(v):,}"
    if 1e-4 <= v < 1:
        return f"{v:.{-d}f}"
    return f"{m}e{d}" if m > 1 else f"1e{d}"


def _upper(v: float) -> float:
    """log10 of the smallest m x 10^d (m = 1..9) at or above 10^v: the axis end."""
    d = math.floor(v + 1e-9)
    m = math.ceil(10 ** (v - d) - 1e-9)
    return d + math.log10(max(m, 1))


def _tick(draw, px, v, label, vertical, y_lo, font):
    if vertical:
        x, y = px(v, y_lo)
        draw.line([(x, y), (x, y + 5)], fill=AXIS)
        draw.text((x, y + 8), label, fill=AXIS, font=font, anchor="mt")
    else:
        x, y = px(0, v)
        draw.line([(x - 5, y), (x, y)], fill=AXIS)
        draw.text((x - 8, y), label, fill=AXIS, font=font, anchor="rm")


def _ranks_to_draw(k: int) -> np.ndarray:
    """0-based rank indices: all of them, or about MAX_POINTS geometrically spaced ones."""
    if k <= MAX_POINTS:
        return np.arange(k)
    return np.unique(np.geomspace(1, k, MAX_POINTS).astype(np.int64) - 1)


def _dashed(draw, p, q, fill, width, dash=10, gap=6):
    length = math.dist(p, q)
    if length == 0:
        return
    ux, uy = (q[0] - p[0]) / length, (q[1] - p[1]) / length
    t = 0.0
    while t < length:
        e = min(t + dash, length)
        draw.line(
            [(p[0] + ux * t, p[1] + uy * t), (p[0] + ux * e, p[1] + uy * e)], fill=fill, width=width
        )
        t = e + gap


def render_rank_frequency(counts, exponent: float | None, title: str) -> Image.Image:
    """The plot as an RGB image: frequency of each used code against its rank (log-log, the
    most frequent code at rank 1) and the truncated Zipf law p(r) = r^-s / sum_k k^-s with the
    fitted exponent s (none drawn when `exponent` is None)."""
    freqs = rank_frequency(counts)
    k, n = freqs.size, int(np.sum(counts))
    fit = zipf_pmf(exponent, k) if exponent is not None else None
    lx = np.log10(np.arange(1, k + 1, dtype=np.float64))
    ly = np.log10(freqs)
    ys = [ly] + ([np.log10(fit[[0, -1]])] if fit is not None else [])
    x_hi = max(_upper(lx[-1] + 0.02), 1.0)
    y_lo = math.floor(min(float(y.min()) for y in ys) + 1e-9)
    y_hi = math.ceil(max(float(y.max()) for y in ys) - 1e-9)
    y_lo = min(y_lo, y_hi - 1)  # at least one decade; frequencies stay <= 1

    img = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM

    def px(x, y):
        return (x0 + (x1 - x0) * x / x_hi, y1 - (y1 - y0) * (y - y_lo) / (y_hi - y_lo))

    small, mid = _font(13), _font(15)
    # Grid lines at 1..9 x each decade; labels at decades, every other one when crowded,
    # and at 2 and 5 x each decade when the axis spans at most two decades.
    for lo, hi, vertical in ((0, x_hi, True), (y_lo, y_hi, False)):
        step = 1 if hi - lo <= 8 else 2
        for d in range(math.floor(lo), math.ceil(hi)):
            for m in range(1, 10):
                v = d + math.log10(m)
                if v > hi + 1e-9:
                    break
                a, b = (px(v, y_lo), px(v, y_hi)) if vertical else (px(0, v), px(x_hi, v))
                draw.line([a, b], fill=GRID if m == 1 else (243, 243, 243), width=1)
                if (m == 1 and (d - lo) % step == 0) or (m in (2, 5) and hi - lo <= 2):
                    _tick(draw, px, v, _tick_label(d, m), vertical, y_lo, small)
        if float(hi).is_integer() and (hi - lo) % step == 0:
            _tick(draw, px, hi, _tick_label(int(hi), 1), vertical, y_lo, small)
    draw.rectangle([x0, y0, x1, y1], outline=AXIS, width=1)

    idx = _ranks_to_draw(k)
    points = [px(lx[i], ly[i]) for i in idx]
    if len(points) > 1:
        draw.line(points, fill=EMPIRICAL, width=2, joint="curve")
    if k <= 64:
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=EMPIRICAL)
    if fit is not None:
        _dashed(draw, px(0, np.log10(fit[0])), px(lx[-1], np.log10(fit[-1])), FIT, 3)

    draw.text(((x0 + x1) / 2, HEIGHT - 18), "rank (codes ordered by frequency)", fill=AXIS,
              font=mid, anchor="mb")  # fmt: skip
    label = Image.new("RGB", (y1 - y0, 22), (255, 255, 255))
    ImageDraw.Draw(label).text(
        ((y1 - y0) / 2, 11), "frequency (share of tokens)", fill=AXIS, font=mid, anchor="mm"
    )
    img.paste(label.rotate(90, expand=True), (6, y0))
    draw.text(((x0 + x1) / 2, 18), title, fill=(0, 0, 0), font=_font(17), anchor="mm")

    entries = [(EMPIRICAL, False, f"empirical: {k:,} of {len(counts):,} codes used, {n:,} tokens")]
    if fit is not None:
        entries.append((FIT, True, f"Zipf fit (MLE): s = {exponent:.3f}"))
    width = 52 + max(draw.textlength(t, font=small) for _, _, t in entries)
    box_h = 10 + 22 * len(entries)
    lx0, ly0 = x1 - width - 10, y0 + 10
    if any(x >= lx0 - 4 and y <= ly0 + box_h + 4 for x, y in points):
        lx0, ly0 = x0 + 10, y1 - box_h - 10  # the curve passes top right: go bottom left
    draw.rectangle([lx0, ly0, lx0 + width, ly0 + box_h], fill=(255, 255, 255), outline=GRID)
    for i, (colour, dashed, text) in enumerate(entries):
        yy = ly0 + 16 + 22 * i
        if dashed:
            _dashed(draw, (lx0 + 8, yy), (lx0 + 40, yy), colour, 3, dash=8, gap=4)
        else:
            draw.line([(lx0 + 8, yy), (lx0 + 40, yy)], fill=colour, width=2)
        draw.text((lx0 + 48, yy), text, fill=AXIS, font=small, anchor="lm")
    return img


def save_rank_frequency_png(counts, exponent: float | None, title: str, path: str) -> str:
    """Writes `render_rank_frequency` as a PNG to `path` (local or gs://); returns it."""
    buf = io.BytesIO()
    render_rank_frequency(counts, exponent, title).save(buf, format="PNG")
    if not paths.is_remote(path):  # GCS has no directories to make
        paths.makedirs(os.path.dirname(paths.absolute(path)))
    paths.write_bytes(path, buf.getvalue())
    return path
