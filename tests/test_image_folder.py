"""Image folders as a data source, written with Pillow into temporary directories: every
image mode decodes to rgb in [0, 1] as an independent numpy computation says, the hash split
is deterministic and disjoint, bad files and empty folders are named, the evaluation crop
equals PIL's resize-then-crop, training crops are seeded, and the tokenizer trainer, its
bundle and pre-tokenization -> 4M read the folder."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from mmjax.data import (
    BadImageError,
    ImageFolderSource,
    ResizeCrop,
    build_source,
    center_crop_resize,
    decode_image,
    eval_dataset,
    pipeline_from_config,
)
from mmjax.data.image_folder import list_images
from mmjax.data.resize import center_box, random_box
from mmjax.data.splits import in_split

RNG = np.random.default_rng(0)


def _smooth(h, w, c=3, seed=0):
    """A smooth random image (uint8) so that JPEG stays close to it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    planes = [
        0.5 + 0.4 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y))
        for _ in range(c)
    ]
    return np.round(np.stack(planes, -1) * 255).astype(np.uint8)


def _write_modes(root):
    """{relative name: expected float32 [H, W, 3]} for each mode, from the arrays written."""
    os.makedirs(root / "nested" / "deeper", exist_ok=True)
    exp = {}
    rgb = RNG.integers(0, 256, (37, 53, 3), np.uint8)
    Image.fromarray(rgb).save(root / "rgb.png")
    exp["rgb.png"] = rgb / 255.0
    gray = RNG.integers(0, 256, (41, 29), np.uint8)
    Image.fromarray(gray).save(root / "gray.png")
    exp["gray.png"] = np.repeat(gray[..., None], 3, -1) / 255.0
    rgba = RNG.integers(0, 256, (23, 31, 4), np.uint8)
    Image.fromarray(rgba).save(root / "nested" / "rgba.png")
    a = rgba[..., 3:] / 255.0
    exp["nested/rgba.png"] = rgba[..., :3] / 255.0 * a + (1 - a)  # on white
    la = RNG.integers(0, 256, (19, 17, 2), np.uint8)
    Image.fromarray(la, "LA").save(root / "nested" / "la.png")
    a = la[..., 1:] / 255.0
    exp["nested/la.png"] = np.repeat(la[..., :1] / 255.0 * a + (1 - a), 3, -1)
    palette = RNG.integers(0, 256, (16, 3), np.uint8)
    idx = RNG.integers(0, 16, (21, 26), np.uint8)
    pal = Image.fromarray(idx, "P")
    pal.putpalette(palette.reshape(-1).tolist())
    pal.save(root / "nested" / "deeper" / "palette.png")
    exp["nested/deeper/palette.png"] = palette[idx] / 255.0
    pal.save(root / "palette_transparent.png", transparency=3)  # index 3 is see-through
    exp["palette_transparent.png"] = np.where((idx == 3)[..., None], 1.0, palette[idx] / 255.0)
    g16 = RNG.integers(0, 65536, (27, 33), np.uint16)
    Image.fromarray(g16).save(root / "gray16.png")
    exp["gray16.png"] = np.repeat(g16[..., None] / 65535.0, 3, -1)
    bits = RNG.random((12, 20)) > 0.5
    Image.fromarray(bits).save(root / "bits.png")
    exp["bits.png"] = np.repeat(bits[..., None].astype(np.float64), 3, -1)
    webp = RNG.integers(0, 256, (30, 45, 3), np.uint8)
    Image.fromarray(webp).save(root / "lossless.webp", lossless=True)
    exp["lossless.webp"] = webp / 255.0
    photo = _smooth(48, 64)
    Image.fromarray(photo).save(root / "photo.jpg", quality=95)
    exp["photo.jpg"] = photo / 255.0  # lossy: compared with a tolerance
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned, show rotated 90 degrees clockwise
    Image.fromarray(photo).save(root / "nested" / "turned.JPEG", quality=95, exif=exif)
    exp["nested/turned.JPEG"] = np.rot90(photo, k=-1) / 255.0
    (root / "notes.txt").write_text("not an image")
    (root / "nested" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return exp


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return root, _write_modes(root)


def test_every_mode_decodes_to_rgb_in_unit_range(folder):
    root, expected = folder
    source = ImageFolderSource(str(root))
    assert source.files == sorted(expected)  # recursive, by extension, notes.txt ignored
    for i, name in enumerate(source.files):
        item = source[i]
        got, want = item["rgb"], expected[name]
        assert item["file"] == name
        assert got.dtype == np.float32 and got.shape == want.shape, name
        assert got.min() >= 0.0 and got.max() <= 1.0, name
        if name.lower().endswith((".jpg", ".jpeg")):
            assert np.abs(got - want).mean() < 0.02, name  # JPEG's loss, nothing more
        else:
            np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)


def test_listing_globs_and_empty_paths_are_named(folder, tmp_path):
    root, expected = folder
    _, names = list_images(str(root / "nested" / "*.png"))
    assert names == ["la.png", "rgba.png"]
    _, names = list_images(str(root / "**" / "*.png"))  # recursive glob, relative to root
    assert names == sorted(n for n in expected if n.endswith(".png"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no png/jpg/jpeg/webp files under .*empty"):
        ImageFolderSource(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"the pattern .*nothing-\*\.png.* matches no"):
        ImageFolderSource(str(tmp_path / "nothing-*.png"))
    with pytest.raises(FileNotFoundError, match=r"missing does not exist"):
        ImageFolderSource(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"needs data\.path"):
        build_source({"source": "image_folder", "path": ""})


def test_bad_files_raise_by_name_or_are_skipped_and_counted(tmp_path):
    good = _smooth(20, 24)
    for k in range(3):
        Image.fromarray(np.roll(good, 5 * k, 0)).save(tmp_path / f"good{k}.png")
    buf = (tmp_path / "good0.png").read_bytes()
    (tmp_path / "b_truncated.png").write_bytes(buf[: len(buf) // 2])
    (tmp_path / "b_text.jpg").write_text("this is not a jpeg")
    with pytest.raises(BadImageError, match=r"b_text\.jpg: not a decodable image"):
        decode_image((tmp_path / "b_text.jpg").read_bytes(), str(tmp_path / "b_text.jpg"))
    strict = ImageFolderSource(str(tmp_path))
    assert strict.files[:2] == ["b_text.jpg", "b_truncated.png"]
    for i, name in enumerate(strict.files[:2]):
        with pytest.raises(BadImageError, match=rf"{name}.*skip_bad_files=True"):
            strict[i]
    lenient = build_source(
        {"source": "image_folder", "path": str(tmp_path), "skip_bad_files": True}, "all"
    )
    items = [lenient[i] for i in range(len(lenient))]
    # each bad file is replaced by the next good one, never by a black image
    assert [it["file"] for it in items] == ["good0.png", "good0.png", *strict.files[2:]]
    np.testing.assert_array_equal(items[0]["rgb"], good / np.float32(255.0))
    assert lenient.skipped == {"b_text.jpg", "b_truncated.png"}


def test_hash_split_is_deterministic_disjoint_and_stable(tmp_path):
    names = [f"d{k % 7}/img_{k:04d}.png" for k in range(300)]
    for n in names:
        (tmp_path / n).parent.mkdir(exist_ok=True)
        (tmp_path / n).write_bytes(b"")  # listing and splitting never decode
    data = {"source": "image_folder", "path": str(tmp_path), "validation_fraction": 0.2}
    train, val = build_source(data, "train"), build_source(data, "validation")
    assert set(train.files).isdisjoint(val.files)
    assert sorted(train.files + val.files) == sorted(names)
    assert build_source(data, "validation").files == val.files  # deterministic
    # the rule, recomputed independently: SHA-256's first 8 bytes as a fraction of 2**64
    held = [
        n
        for n in sorted(names)
        if int(hashlib.sha256(n.encode()).hexdigest()[:16], 16) < 0.2 * 2**64
    ]
    assert val.files == held and 40 <= len(held) <= 80
    for k in range(20):  # new files do not move old ones
        (tmp_path / f"new_{k}.png").write_bytes(b"")
    assert set(val.files) <= set(build_source(data, "validation").files)
    assert set(train.files) <= set(build_source(data, "train").files)
    # a separate validation folder replaces the hold-out; training then keeps everything
    (tmp_path.parent / "val_only").mkdir(exist_ok=True)
    (tmp_path.parent / "val_only" / "v.png").write_bytes(b"")
    split = dict(data, eval_path=str(tmp_path.parent / "val_only"))
    assert build_source(split, "validation").files == ["v.png"]
    assert len(build_source(split, "train")) == 320
    with pytest.raises(ValueError, match=r"no validation data: set data\.eval_path"):
        build_source(dict(data, validation_fraction=0.0), "validation")
    assert in_split("x", "all", 0.0) and not in_split("x", "validation", 0.0)


@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (10, 14), (64, 64), (200, 90)])
def test_center_crop_equals_pil_resize_then_crop(shape):
    r = 16
    # noise in [64, 192]: bicubic overshoot never reaches PIL's uint8 clipping between passes
    img = RNG.integers(64, 193, (*shape, 3), np.uint8)
    h, w = shape
    # reference: PIL resizes the whole uint8 image (shorter side -> r), numpy cuts the centre
    size = (max(round(w * r / h), r), r) if h <= w else (r, max(round(h * r / w), r))
    full = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))
    top, left = (full.shape[0] - r) // 2, (full.shape[1] - r) // 2
    want = full[top : top + r, left : left + r] / 255.0
    got = center_crop_resize(img / np.float32(255.0), r)
    assert got.shape == (r, r, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1.01 / 255)  # PIL's uint8 output rounding
    # and the crop is centred: a mirror-symmetric image stays symmetric (when the margin
    # left after the resize splits evenly)
    sym = np.concatenate([img, img[:, ::-1]], axis=1) / 255.0
    if (max(round(2 * w * r / h), r) - r) % 2 == 0:
        out = center_crop_resize(sym, r)
        np.testing.assert_allclose(out, out[:, ::-1], atol=1e-5)


def test_training_crops_are_seeded_and_follow_their_definition():
    scale, ratio = (0.5, 0.9), (0.8, 1.25)
    for seed in range(200):
        rng = np.random.default_rng(seed)
        h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        left, top, right, bottom = random_box(np.random.default_rng(seed), h, w, scale, ratio)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        cw, ch = right - left, bottom - top
        side = min(h, w)
        assert scale[0] * side**2 * 0.85 <= cw * ch <= scale[1] * side**2 * 1.15
        assert ratio[0] * 0.85 <= cw / ch <= ratio[1] * 1.15
    img = {"rgb": RNG.random((24, 24, 3)).astype(np.float32)}
    crop = ResizeCrop(24, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.5)
    outs = [crop(img, np.random.default_rng(s))["rgb"] for s in range(16)]
    for out in outs:  # the whole image, mirrored or not: exactly
        assert np.array_equal(out, img["rgb"]) or np.array_equal(out, img["rgb"][:, ::-1])
    assert 3 <= sum(np.array_equal(o, img["rgb"]) for o in outs) <= 13
    a = ResizeCrop(12)(img, np.random.default_rng(5))["rgb"]
    np.testing.assert_array_equal(a, ResizeCrop(12)(img, np.random.default_rng(5))["rgb"])
    assert center_box(30, 60, 10) == (15.0, 0.0, 45.0, 30.0)  # 60x30 -> 20x10, cut 5..15
    assert center_box(60, 30, 10) == (0.0, 15.0, 30.0, 45.0)


def test_pipeline_resizes_any_size_and_is_deterministic_per_seed(folder):
    root, _ = folder
    data = {
        "source": "image_folder", "path": str(root), "validation_fraction": 0.0,
        "resolution": 16, "batch_size": 4, "seed": 3, "resize": "auto",
    }  # fmt: skip

    def first(**kw):
        batch = next(pipeline_from_config(dict(data, **kw), 0, 1))
        assert batch["rgb"].shape == (4, 16, 16, 3) and batch["rgb"].dtype == np.float32
        return batch

    a, b = first(), first()
    np.testing.assert_array_equal(a["rgb"], b["rgb"])
    assert list(a["file"]) == list(b["file"])
    c = first(seed=4)
    assert list(c["file"]) != list(a["file"]) or not np.array_equal(c["rgb"], a["rgb"])
    # the same files with a fixed order: only the crops differ between seeds
    d, e = first(shuffle=False), first(shuffle=False, seed=9)
    assert list(d["file"]) == list(e["file"]) and not np.array_equal(d["rgb"], e["rgb"])
    # evaluation: the centre crop of each file, in file order
    ev = eval_dataset(dict(data), "all")
    source = ImageFolderSource(str(root))
    for i in (0, 3, len(source) - 1):
        np.testing.assert_allclose(ev[i]["rgb"], center_crop_resize(source.read(i), 16))


# -- the trainer, its bundle, pre-tokenization and 4M on an image folder ----------------------

R = 32
MODEL = {"type": "conv", "size": "tiny", "channels": 8, "channel_mult": [1, 1, 2, 2]}
QUANT = {"type": "fsq", "levels": [4, 4, 4]}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """24 smooth images of assorted sizes (some portrait, some smaller than R)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for k in range(24):
        h, w = int(rng.integers(24, 70)), int(rng.integers(24, 70))
        ext = (".png", ".jpg", ".webp")[k % 3]
        Image.fromarray(_smooth(h, w, seed=k)).save(root / f"p{k:02d}{ext}", quality=90)
    return root


@pytest.mark.slow  # a minute of training or compiling: CI's slow step
def test_tokenizer_trainer_evaluates_on_the_folders_validation_images(photos, tmp_path):
    from mmjax.configs import load
    from mmjax.tokenizers import Tokenizer
    from mmjax.train.tokenizer_trainer import TokenizerTrainer, reconstruction_metrics

    c = load("tokenizer_rgb", "quantizer=fsq,quick")
    c.data.update(source="image_folder", path=str(photos), resolution=R, batch_size=8)
    c.data.validation_fraction = 0.25
    c.total_steps = c.eval.every = c.checkpoint.every = 2
    c.log_every, c.checkpoint.async_save, c.eval.usage_images = 1, False, 16
    trainer = TokenizerTrainer(c, str(tmp_path))
    final = trainer.run()
    val = build_source(c.data, "validation")
    assert 2 <= len(val) <= 12 and not set(val.files) & set(build_source(c.data).files)
    n = min(c.eval.num_images, len(val))
    crops = np.stack([center_crop_resize(val.read(i), R) for i in range(n)])
    np.testing.assert_allclose(trainer.val_raw, crops, atol=1e-6)
    # the grid's input row shows those crops (labels margin 50 px, pad 2, scale 2)
    grid = np.asarray(Image.open(tmp_path / "eval" / "0000002.png").convert("RGB"))
    for k in range(n):
        x = 50 + 2 + k * (2 * R + 2)
        tile = grid[2 : 2 + 2 * R : 2, x : x + 2 * R : 2]
        np.testing.assert_allclose(tile, np.round(crops[k] * 255), atol=1)
    tok = Tokenizer.load(str(tmp_path))
    recon = np.asarray(tok.decode(tok.encode(crops)))
    for key, value in reconstruction_metrics("rgb", crops, recon).items():
        np.testing.assert_allclose(final[f"eval/{key}"], value, rtol=1e-4, atol=1e-4)
    codes = np.asarray(tok.encode(crops if len(val) <= 16 else trainer.usage_raw))
    assert len(trainer.usage_raw) == min(16, len(val))
    np.testing.assert_allclose(
        final["eval/codebook_usage"], len(np.unique(codes)) / tok.codebook_size, rtol=1e-6
    )
    assert tok.data["source"] == "image_folder" and tok.data["path"] == str(photos)
    assert tok.data["resolution"] == R and tok.data["resize"] == "random_resized_crop"
    assert tok.data["train_crop"] == {"scale": [0.8, 1.0], "ratio": [0.9, 1.1], "flip_prob": 0.5}
    meta = json.loads((tmp_path / "tokenizer" / "tokenizer.json").read_text())
    assert meta["data"]["validation_fraction"] == 0.25


def test_image_folder_pretokenizes_and_4m_trains_on_it(photos, tmp_path, untrained_tokenizers):
    from mmjax.configs import fourm
    from mmjax.data.pretokenized import PretokenizedSource
    from mmjax.pretokenize.run import main
    from mmjax.tokenizers import Tokenizer
    from mmjax.train.fourm_trainer import train_fourm

    dirs = untrained_tokenizers(("rgb", "depth"), MODEL, QUANT, R)
    out = str(tmp_path / "tokens")
    argv = [
        "--source", "image_folder", "--path", str(photos), "--tokenizers", f"rgb={dirs['rgb']}",
        "--out", out, "--resolution", str(R), "--batch-size", "5",
    ]  # fmt: skip
    manifest = main(argv)
    assert manifest["num_examples"] == 24 and manifest["source"] == "image_folder"
    assert set(manifest["modalities"]) == {"tok_rgb", "rgb"} and manifest["skipped_files"] == []
    source = ImageFolderSource(str(photos))
    crops = np.stack([center_crop_resize(source.read(i), R) for i in range(24)])
    tok = Tokenizer.load(dirs["rgb"])
    data = PretokenizedSource(out)
    np.testing.assert_array_equal(
        np.stack([data[i]["tok_rgb"] for i in range(24)]), np.asarray(tok.encode(crops))
    )
    np.testing.assert_allclose(data[5]["rgb"], crops[5], atol=0.5 / 255 + 1e-6)
    with pytest.raises(SystemExit):
        main([*argv[:5], f"depth={dirs['depth']}", "--out", str(tmp_path / "x"), *argv[7:]])
    c = fourm.get_config("quick")
    c.data.path, c.data.batch_size = out, 8
    c.masking.input_budget = c.masking.target_budget = 16
    c.total_steps = c.eval.every = c.checkpoint.every = 3
    c.eval.num_examples, c.eval.batch_size = 8, 8
    c.log_every, c.checkpoint.async_save = 1, False
    final = train_fourm(c, str(tmp_path / "fourm"))
    assert np.isfinite(final["eval/loss/tok_rgb"]) and final["eval/loss/tok_rgb"] > 0


def test_asking_for_a_modality_the_folder_lacks_is_named(photos, tmp_path, untrained_tokenizers):
    from mmjax.pretokenize import pretokenize

    dirs = untrained_tokenizers(("rgb", "depth"), MODEL, QUANT, R)
    with pytest.raises(
        ValueError, match=r"asks for 'depth'.*ImageFolderSource.*provides \['rgb'\]"
    ):
        pretokenize(
            ImageFolderSource(str(photos)), {"depth": dirs["depth"]}, str(tmp_path / "o"),
            resolution=R, resize=True,
        )  # fmt: skip


def test_a_gs_folder_reads_as_the_local_one(folder, gcs_server):
    """The same folder on gs:// (a local GCS API server): the same files, split and pixels,
    as a directory and as a glob."""
    import uuid

    from mmjax.storage import paths

    root, expected = folder
    gs = f"gs://test-bucket/{uuid.uuid4().hex[:12]}"
    for name in [*sorted(expected)[:5], "notes.txt"]:
        paths.write_bytes(f"{gs}/{name}", (root / name).read_bytes())
    remote = ImageFolderSource(gs)
    assert remote.files == sorted(expected)[:5]  # notes.txt ignored there too
    for i, name in enumerate(remote.files):
        np.testing.assert_array_equal(remote[i]["rgb"], decode_image((root / name).read_bytes()))
    pattern = ImageFolderSource(f"{gs}/*.png")
    assert pattern.files == [n for n in remote.files if "/" not in n and n.endswith(".png")]
    data = {"source": "image_folder", "path": gs, "validation_fraction": 0.5}
    local = {n for n in ImageFolderSource(str(root), "validation", 0.5).files}
    assert set(build_source(data, "validation").files) == local & set(remote.files)


def test_pretokenize_names_a_bad_file_or_skips_and_counts_it(
    tmp_path, untrained_tokenizers, capsys
):
    from mmjax.data.pretokenized import PretokenizedSource
    from mmjax.pretokenize.run import main

    dirs = untrained_tokenizers(("rgb", "depth"), MODEL, QUANT, R)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(_smooth(40 + k, 50, seed=k)).save(folder / f"ok{k}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    argv = [
        "--source", "image_folder", "--path", str(folder), "--tokenizers", f"rgb={dirs['rgb']}",
        "--resolution", str(R), "--batch-size", "2",
    ]  # fmt: skip
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "a")])
    assert "broken.jpg: not a decodable image" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.partial").exists()
    manifest = main([*argv, "--out", str(tmp_path / "b"), "--skip-bad-files"])
    assert manifest["skipped_files"] == ["broken.jpg"] and manifest["num_examples"] == 4
    assert "skipped 1 undecodable image file(s)" in capsys.readouterr().out
    views = PretokenizedSource(str(tmp_path / "b"))
    # broken.jpg (first by name) is stood in for by the next file, ok0.png: never black
    np.testing.assert_array_equal(views[0]["rgb"], views[1]["rgb"])
    assert views[0]["rgb"].std() > 0.05
