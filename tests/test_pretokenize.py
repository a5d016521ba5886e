"""Pre-tokenization (`python -m mmjax.pretokenize`) and its reader, with tiny untrained
tokenizer bundles: stored tokens equal an independent `Tokenizer.encode` of the same scenes,
text records decode back to the scene, crops are aligned across modalities and recomputable
from the seed, the manifest describes the data, and bad outputs / inputs are refused."""

import json
import os
import shutil

import numpy as np
import pytest

from mmjax.data import ScenesSource, build_dataset, crop_and_flip, scenes, write_records
from mmjax.data.pretokenized import PretokenizedSource
from mmjax.data.text_vocab import (
    CLASS_WORDS,
    COLOR_WORDS,
    METADATA_RANGES,
    scene_text_tokens,
    scenes_text_tokenizer,
)
from mmjax.data.views import view_params
from mmjax.pretokenize import pretokenize, registry_config_from_manifest
from mmjax.pretokenize.run import main
from mmjax.text import TextTokenizer, tokens_to_metadata, tokens_to_scene_boxes

R, RENDER, SEED = 32, 40, 7
MODEL = {"type": "conv", "size": "tiny", "channels": 8, "channel_mult": [1, 1, 2, 2]}
QUANT = {"type": "fsq", "levels": [5, 5, 4, 4]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, untrained_tokenizers):
    """Untrained rgb and depth bundles at 32 px (4 x 4 tokens), a small text tokenizer, one
    plain output (6 scenes, batches of 4 so the last one is padded, 2 shards) and one with
    3 crops of 40 px renders."""
    from mmjax.tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("pretokenize")
    dirs = untrained_tokenizers(("rgb", "depth"), MODEL, QUANT, R)
    text = scenes_text_tokenizer(100)
    text.save(root / "text.json")
    plain, cropped = str(root / "plain"), str(root / "cropped")
    pretokenize(
        ScenesSource("train", R, 6), dirs, plain, text_tokenizer=str(root / "text.json"),
        resolution=R, batch_size=4, num_shards=2, info={"source": "scenes", "split": "train"},
    )  # fmt: skip
    pretokenize(
        ScenesSource("train", RENDER, 4), dirs, cropped, text_tokenizer=text, resolution=R,
        crops=3, seed=SEED, batch_size=2, info={"source": "scenes", "split": "train"},
    )  # fmt: skip
    toks = {m: Tokenizer.load(d) for m, d in dirs.items()}
    return dict(root=root, dirs=dirs, toks=toks, text=text, plain=plain, cropped=cropped)


def test_tokens_equal_an_independent_encode(setup):
    source = PretokenizedSource(setup["plain"])
    assert len(source) == 6 and source.manifest["num_shards"] == 2
    examples = [scenes.generate(i, "train", R) for i in range(6)]
    for m, tok in setup["toks"].items():
        images = np.stack([ex[m] for ex in examples])
        expected = np.asarray(tok.encode(images))
        stored = np.stack([source[i][f"tok_{m}"] for i in range(6)])
        assert stored.dtype == np.int32 and stored.shape == (6, 4, 4)
        np.testing.assert_array_equal(stored, expected)
        assert len(np.unique(stored)) > 3  # not a degenerate tokenizer
        np.testing.assert_allclose(
            np.asarray(tok.decode(stored)), np.asarray(tok.decode(expected)), atol=1e-6
        )
    raw_source = PretokenizedSource(setup["plain"], ["rgb"], pixels="uint8")
    for i, ex in enumerate(examples):
        raw = raw_source[i]["rgb"]
        assert raw.dtype == np.uint8 and raw.shape == (R, R, 3)
        np.testing.assert_array_equal(raw, np.round(ex["rgb"] * 255).astype(np.uint8))
        np.testing.assert_allclose(source[i]["rgb"], ex["rgb"], atol=0.5 / 255 + 1e-6)


def test_text_records_decode_to_the_scene(setup):
    source, tok = PretokenizedSource(setup["plain"]), setup["text"]
    for i in range(6):
        ex, rec = scenes.generate(i, "train", R), source[i]
        assert tok.decode(rec["caption"]).replace(" :", ":") == ex["caption"].lower()
        assert tok.eos_id not in rec["caption"].tolist()
        boxes, cls, col = tokens_to_scene_boxes(
            tok, rec["boxes"], class_words=CLASS_WORDS, color_words=COLOR_WORDS,
            image_size=R, max_boxes=len(ex["boxes"]),
        )  # fmt: skip
        # serialized left to right (x_min, then y_min); exact: 32 px <= 64 coord bins
        rows = sorted(
            (tuple(b), c, k)
            for b, c, k in zip(ex["boxes"].tolist(), ex["box_class"], ex["box_color"], strict=True)
            if b[0] >= 0
        )
        n = len(rows)
        assert n >= 1 and np.all(boxes[n:] == -1)
        np.testing.assert_array_equal(boxes[:n], [r[0] for r in rows])
        np.testing.assert_array_equal(cls[:n], [r[1] for r in rows])
        np.testing.assert_array_equal(col[:n], [r[2] for r in rows])
        meta = tokens_to_metadata(tok, rec["metadata"], ranges=METADATA_RANGES)
        for k, name in enumerate(scenes.METADATA_FIELDS):
            lo, hi = METADATA_RANGES[name]
            value = np.clip(ex["metadata"][k], lo, hi)
            assert abs(meta[name] - value) <= (hi - lo) / 32 / 2 + 1e-6, name
        assert round(meta["object_count"]) == ex["metadata"][0]


def test_reading_order_is_left_to_right_with_padding_last():
    from mmjax.data.text_vocab import reading_order

    rng = np.random.default_rng(0)
    for _ in range(50):
        m = int(rng.integers(1, 8))
        boxes = rng.integers(0, 4, (m, 4))  # small range: many ties on x_min and y_min
        boxes[rng.random(m) < 0.3] = -1  # padding rows anywhere
        order = reading_order(boxes)
        assert sorted(order.tolist()) == list(range(m))  # a permutation
        real = [tuple(b) for b in boxes.tolist() if b != [-1] * 4]
        expected = sorted(real) + [(-1,) * 4] * (m - len(real))
        assert [tuple(b) for b in boxes[order].tolist()] == expected


def test_crops_are_aligned_and_recomputable_from_the_seed(setup):
    source, toks = PretokenizedSource(setup["cropped"]), setup["toks"]
    assert len(source) == 12
    views, flips = [], set()
    for e in range(4):
        full = scenes.generate(e, "train", RENDER)
        params = view_params(SEED, e, 3, (RENDER, RENDER), R)
        for v, (top, left, flip) in enumerate(params):
            where = source.view(len(views))  # example-major, view-minor
            assert (int(where["example_index"]), int(where["view"])) == (e, v)
            assert where["crop"].tolist() == [top, left, int(flip)]
            views.append(crop_and_flip(full, top, left, R, flip))
            flips.add(flip)
    assert flips == {False, True} and len({v["rgb"].tobytes() for v in views}) == 12
    for m, tok in toks.items():  # the same crop in every modality of a view
        expected = np.asarray(tok.encode(np.stack([v[m] for v in views])))
        np.testing.assert_array_equal(
            np.stack([source[i][f"tok_{m}"] for i in range(12)]), expected
        )
    for i, view in enumerate(views):
        rec = source[i]
        np.testing.assert_allclose(rec["rgb"], view["rgb"], atol=0.5 / 255 + 1e-6)
        text = scene_text_tokens(setup["text"], view, R)  # boxes and captions follow the crop
        for name in ("caption", "boxes", "metadata"):
            np.testing.assert_array_equal(rec[name], text[name])


def test_manifest_and_registry_config(setup):
    from mmjax.fourm import build_registry

    with open(os.path.join(setup["cropped"], "manifest.json")) as f:
        manifest = json.load(f)
    assert list(manifest)[-1] == "complete" and manifest["complete"] is True
    assert manifest["num_examples"] == 12 and manifest["num_source_examples"] == 4
    assert (manifest["crops"], manifest["resolution"], manifest["seed"]) == (3, R, SEED)
    assert (manifest["source"], manifest["split"]) == ("scenes", "train")
    mods = manifest["modalities"]
    assert set(mods) == {"tok_rgb", "tok_depth", "rgb", "caption", "boxes", "metadata"}
    for m, tok in setup["toks"].items():
        spec = mods[f"tok_{m}"]
        assert spec["kind"] == "image_tokens" and spec["vocab_size"] == tok.codebook_size == 400
        assert spec["grid"] == [4, 4] and spec["tokenizer"] == os.path.abspath(setup["dirs"][m])
    source = PretokenizedSource(setup["cropped"])
    for name in ("caption", "boxes", "metadata"):
        assert mods[name]["vocab_size"] == setup["text"].vocab_size
        assert mods[name]["max_length"] == max(len(source[i][name]) for i in range(12))
    assert TextTokenizer.load(manifest["text_tokenizer"]).vocab_size == setup["text"].vocab_size
    registry = build_registry(registry_config_from_manifest(manifest))
    assert registry["tok_rgb"].grid == (4, 4) and registry["tok_rgb"].vocab_size == 400
    assert registry["rgb"].kind == "pixels" and registry["rgb"].image_size == (R, R)
    assert registry["boxes"].max_length == mods["boxes"]["max_length"] + 1
    # Fixed-shape modalities batch through the ordinary Grain pipeline.
    pixels = PretokenizedSource(setup["cropped"], ["tok_rgb", "rgb"])
    batch = build_dataset(pixels, batch_size=4, num_epochs=1)[0]
    assert batch["tok_rgb"].shape == (4, 4, 4) and batch["rgb"].shape == (4, R, R, 3)


def test_bad_outputs_are_refused_by_the_reader(setup, tmp_path):
    bad, path = str(tmp_path / "bad"), os.path.join(str(tmp_path / "bad"), "manifest.json")

    def rewrite(**changes):
        with open(path) as f:
            manifest = json.load(f)
        with open(path, "w") as f:
            json.dump(dict(manifest, **changes), f)

    shutil.copytree(setup["plain"], bad)
    rewrite(text_tokenizer="/moved/away.json", complete=True)  # a moved output finds its own
    assert PretokenizedSource(bad).manifest["text_tokenizer"] == os.path.join(
        bad, "text_tokenizer.json"
    )
    with pytest.raises(KeyError, match="no modality 'tok_normals'"):
        PretokenizedSource(bad, ["tok_normals"])
    shard = os.path.join(bad, "tok_depth", "shard-00001-of-00002.array_record")
    write_records([{"tokens": np.zeros((4, 4), np.int32)}] * 2, str(tmp_path), "short")
    shutil.copy(tmp_path / "short-00000-of-00001.array_record", shard)
    with pytest.raises(ValueError, match=r"tok_depth holds 5 records, but the manifest says 6"):
        PretokenizedSource(bad)
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match=r"tok_depth.*shard-00001-of-00002"):
        PretokenizedSource(bad)
    assert PretokenizedSource(bad, ["caption"])[0]["caption"].ndim == 1  # the rest still reads
    rewrite(complete=False)
    with pytest.raises(ValueError, match="does not mark the output complete"):
        PretokenizedSource(bad)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match=r"manifest\.json not found"):
        PretokenizedSource(bad)


class _Failing(ScenesSource):
    def __getitem__(self, index):
        if index == 3:
            raise RuntimeError("boom at scene 3")
        return super().__getitem__(index)


def test_writer_refuses_bad_input_and_leaves_no_partial_output(setup, tmp_path):
    dirs, out = setup["dirs"], tmp_path / "out"

    def run(source, tokenizers=dirs, resolution=R, **kw):
        return pretokenize(
            source, tokenizers, str(out), text_tokenizer=setup["text"], resolution=resolution, **kw
        )

    with pytest.raises(ValueError, match=r"encodes 32x32 images, but --resolution is 64"):
        run(ScenesSource("train", 64, 2), resolution=64)
    with pytest.raises(ValueError, match="is a 'rgb' tokenizer, not a 'depth' one"):
        run(ScenesSource("train", R, 2), {"depth": dirs["rgb"]})
    with pytest.raises(ValueError, match=r"images are \(40, 40\), need 32x32"):
        run(ScenesSource("train", RENDER, 2))  # unaugmented: the render must fit exactly
    with pytest.raises(RuntimeError, match="boom"):
        run(_Failing("train", R, 5), batch_size=2)
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # not a pre-tokenization output: never deleted
        with pytest.raises(FileExistsError, match="not empty"):
            run(ScenesSource("train", R, 2), overwrite=overwrite)
    assert (out / "notes.txt").read_text() == "mine"


def test_cli_end_to_end_is_deterministic_and_overwrites_only_when_asked(setup, capsys):
    out = str(setup["root"] / "cli")
    tokenizers = ",".join(f"{m}={d}" for m, d in setup["dirs"].items())
    argv = [
        "--tokenizers", tokenizers, "--out", out, "--num-examples", "4", "--resolution",
        str(R), "--crops", "3", "--seed", str(SEED), "--batch-size", "3", "--text-examples",
        "100", "--shards", "3",
    ]  # fmt: skip
    manifest = main(argv)
    assert "pre-tokenized 4 examples x 3 view(s) = 12 records" in capsys.readouterr().out
    assert manifest["render_resolution"] == RENDER and manifest["text_tokenizer_origin"] is None
    # Same records as the library-call run; the text tokenizer was trained anew (its learned
    # ids are not reproducible), so the text records agree once decoded with their own.
    cli, ref = PretokenizedSource(out), PretokenizedSource(setup["cropped"])
    cli_text = TextTokenizer.load(os.path.join(out, "text_tokenizer.json"))
    for i in range(12):
        a, b = cli[i], ref[i]
        assert set(a) == set(b)
        for name in ("tok_rgb", "tok_depth", "rgb", "boxes", "metadata"):  # special tokens
            np.testing.assert_array_equal(a[name], b[name])
        assert cli_text.decode(a["caption"]) == setup["text"].decode(b["caption"])
    with pytest.raises(SystemExit):
        main(argv)
    assert "not empty (pass --overwrite" in capsys.readouterr().err
    assert main([*argv[:5], "2", *argv[6:], "--overwrite"])["num_source_examples"] == 2
    assert len(PretokenizedSource(out)) == 6 and not os.path.exists(out + ".old")
    with pytest.raises(SystemExit):
        main(["--tokenizers", tokenizers, "--out", out + "2", "--resolution", "64"])
    assert "--resolution is 64" in capsys.readouterr().err


@pytest.mark.slow
def test_trained_tokenizer_records_decode_close_to_the_images(tmp_path):
    """A 200-step rgb tokenizer (about 3 minutes on 2 CPU cores): the stored tokens decode
    to images clearly closer to the input than each image's mean colour."""
    from mmjax.configs import tokenizer_rgb
    from mmjax.tokenizers import Tokenizer
    from mmjax.train.tokenizer_trainer import train_tokenizer

    c = tokenizer_rgb.get_config(f"quantizer=fsq,quick,resolution={R}")
    c.total_steps, c.log_every, c.eval.every, c.checkpoint.every = 200, 50, 200, 200
    c.checkpoint.async_save, c.optimizer.learning_rate = False, 3e-3
    train_tokenizer(c, str(tmp_path / "tok"))
    out = str(tmp_path / "out")
    pretokenize(
        ScenesSource("validation", R, 16), {"rgb": str(tmp_path / "tok")}, out,
        text_tokenizer=scenes_text_tokenizer(50), resolution=R, batch_size=8,
    )  # fmt: skip
    tok, source = Tokenizer.load(str(tmp_path / "tok")), PretokenizedSource(out)
    images = np.stack([scenes.generate(i, "validation", R)["rgb"] for i in range(16)])
    decoded = np.asarray(tok.decode(np.stack([source[i]["tok_rgb"] for i in range(16)])))
    np.testing.assert_allclose(decoded, np.asarray(tok.decode(tok.encode(images))), atol=1e-5)

    def psnr(x):
        return float(np.mean(-10 * np.log10(np.mean((x - images) ** 2, axis=(1, 2, 3)))))

    baseline = psnr(np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape))
    assert psnr(decoded) > max(baseline + 1.0, 18.0), (psnr(decoded), baseline)


class _Empty(ScenesSource):
    def __len__(self):
        return 0


def test_no_examples_to_write_is_named_as_such(setup, tmp_path, capsys):
    tokenizers = ",".join(f"{m}={d}" for m, d in setup["dirs"].items())
    for n in ("0", "-2"):
        with pytest.raises(SystemExit):
            main(["--tokenizers", tokenizers, "--out", str(tmp_path / "o"), "--num-examples", n])
        err = capsys.readouterr().err
        assert f"--num-examples must be >= 1 (or left out for the whole source): with {n}" in err
        assert "--shards must" not in err
    with pytest.raises(ValueError, match=r"--num-examples must be >= 1 .* no examples to write"):
        pretokenize(
            ScenesSource("train", R, 4), setup["dirs"], str(tmp_path / "o"), resolution=R,
            num_examples=0,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"no examples to write: the source .* holds none"):
        pretokenize(_Empty("train", R, 4), setup["dirs"], str(tmp_path / "o"), resolution=R)
    assert not (tmp_path / "o").exists()
