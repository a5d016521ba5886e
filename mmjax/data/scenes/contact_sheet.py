"""A PNG grid of scenes: rgb | depth | normals | semseg | instance | boxes, plus caption."""

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmjax.data.scenes.constants import COLOR_RGB, MAX_OBJECTS

SEMSEG_PALETTE = np.array(
    [[0, 0, 0], [150, 150, 150], [230, 80, 60], [70, 190, 80], [70, 110, 230]], np.uint8
)
INSTANCE_PALETTE = np.array(
    [
        [0, 0, 0],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
    ],
    np.uint8,
)
COLUMNS = ("rgb", "depth", "normals", "semseg", "instance", "boxes")


def _to_u8(x):
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _depth_image(depth):
    hit = depth > 0
    out = np.zeros(depth.shape, np.float64)
    if hit.any():
        lo, hi = depth[hit].min(), depth[hit].max()
        out[hit] = 1.0 - 0.85 * (depth[hit] - lo) / max(hi - lo, 1e-6)  # near = bright
    return np.repeat(_to_u8(out)[..., None], 3, axis=-1)


def scene_panels(sample, scale: int):
    """The six panels of one scene as uint8 [R*scale, R*scale, 3] images."""

    def up(img):
        return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)

    hit = (sample["semseg"] > 0)[..., None]
    panels = [
        up(_to_u8(sample["rgb"])),
        up(_depth_image(sample["depth"])),
        up(np.where(hit, _to_u8(sample["normals"] * 0.5 + 0.5), 0).astype(np.uint8)),
        up(SEMSEG_PALETTE[sample["semseg"]]),
        up(INSTANCE_PALETTE[sample["instance"] % len(INSTANCE_PALETTE)]),
    ]
    boxed = Image.fromarray(up(_to_u8(sample["rgb"])))
    draw = ImageDraw.Draw(boxed)
    for row in range(MAX_OBJECTS):
        if sample["box_instance"][row] == 0:
            continue
        x0, y0, x1, y1 = (int(v) for v in sample["boxes"][row])
        # 1-px rectangle just outside the box's pixels.
        rect = (x0 * scale - 1, y0 * scale - 1, (x1 + 1) * scale, (y1 + 1) * scale)
        colour = tuple(int(c) for c in _to_u8(COLOR_RGB[sample["box_color"][row]]))
        draw.rectangle(rect, outline=(255, 255, 255))
        inner = (rect[0] + 1, rect[1] + 1, rect[2] - 1, rect[3] - 1)
        draw.rectangle(inner, outline=colour)
    panels.append(np.asarray(boxed))
    return panels


def save_contact_sheet(path, indices=range(6), split="train", resolution=64, scale=None):
    """Write a PNG with one row per scene (see COLUMNS) and its caption under the row."""
    from mmjax.data.scenes.generator import generate

    indices = list(indices)
    if scale is None:
        scale = max(1, 192 // resolution)
    size = resolution * scale
    gap = 4
    font = ImageFont.load_default()
    width = len(COLUMNS) * (size + gap) + gap
    chars = max(20, width // 7)
    header = 16
    rows = []
    for index in indices:
        sample = generate(index, split, resolution)
        lines = textwrap.wrap(f"[{split} {index}] {sample['caption']}", chars)
        rows.append((sample, lines))
    line_h = 12
    height = header + sum(size + gap + line_h * len(lines) + gap for _, lines in rows)
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(COLUMNS):
        draw.text((gap + c * (size + gap), 2), name, fill=(230, 230, 230), font=font)
    y = header
    for sample, lines in rows:
        for c, panel in enumerate(scene_panels(sample, scale)):
            sheet.paste(Image.fromarray(panel), (gap + c * (size + gap), y))
        y += size + 2
        for line in lines:
            draw.text((gap, y), line, fill=(230, 230, 230), font=font)
            y += line_h
        y += gap + 2
    sheet.save(path)
    return path
