"""Tests for mmjax.text: the WordPiece tokenizer with 4M special tokens and the serializers."""

import itertools
import json
import math
import random
import re
from fractions import Fraction

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from mmjax.text import (
    COORD_AXES,
    TextTokenizer,
    boxes_to_tokens,
    metadata_to_tokens,
    scene_boxes_to_tokens,
    tokens_to_boxes,
    tokens_to_metadata,
    tokens_to_scene_boxes,
    train_tokenizer,
)

SHAPES = ("sphere", "cube", "cylinder", "cone")
COLORS = ("red", "blue", "green", "yellow", "gray", "purple")
SIZES = ("large", "small", "tiny", "huge")
MATERIALS = ("metal", "rubber", "glass")
RELATIONS = ("left of", "right of", "behind", "in front of", "next to")
FIELDS = ("object_count", "mean_area", "brightness")
NUM_COORD_BINS = 64
NUM_VALUE_BINS = 32


def make_captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    c = rng.choice
    templates = [
        lambda: (
            f"A {c(SIZES)} {c(COLORS)} {c(SHAPES)} is {c(RELATIONS)} a {c(SIZES)} "
            f"{c(COLORS)} {c(SHAPES)}."
        ),
        lambda: f"There are {rng.randint(2, 9)} {c(COLORS)} {c(SHAPES)}s in the scene.",
        lambda: (
            f"Is there a {c(MATERIALS)} {c(SHAPES)} {c(RELATIONS)} the {c(COLORS)} {c(SHAPES)}?"
        ),
        lambda: (
            f"{rng.randint(1, 12)} objects, the biggest one is a {c(COLORS)} "
            f"{c(MATERIALS)} {c(SHAPES)}."
        ),
        lambda: f"The {c(SIZES)} {c(SHAPES)} made of {c(MATERIALS)} looks {c(COLORS)}!",
        lambda: (
            f"{c(COLORS).capitalize()} {c(SHAPES)}, {c(COLORS)} {c(SHAPES)} and a "
            f"{c(SIZES)} {c(SHAPES)}."
        ),
    ]
    return [c(templates)() for _ in range(n)]


CORPUS = make_captions(200, seed=0)


def expected_special_tokens(num_sentinels=100, bins=NUM_COORD_BINS, value_bins=NUM_VALUE_BINS):
    """The documented layout, written out independently of the implementation."""
    toks = ["[PAD]", "[EOS]", "[UNK]", "[SOS]"]
    toks += [f"[S_{i}]" for i in range(num_sentinels)]
    for axis in ("xmin", "ymin", "xmax", "ymax"):
        toks += [f"{axis}={b}" for b in range(bins)]
    toks += [f"[CLASS_{w}]" for w in SHAPES]
    toks += [f"[COLOR_{w}]" for w in COLORS]
    toks += [f"[META_{f}]" for f in FIELDS]
    toks += [f"v={b}" for b in range(value_bins)]
    return toks


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(
        CORPUS,
        vocab_size=1000,
        num_coord_bins=NUM_COORD_BINS,
        class_words=SHAPES,
        color_words=COLORS,
        metadata_fields=FIELDS,
        num_value_bins=NUM_VALUE_BINS,
    )


def ref_bin(x, lo, hi, n) -> int:
    """Reference quantizer in exact rational arithmetic (clip, floor, last bin closed)."""
    x = min(max(Fraction(x), Fraction(lo)), Fraction(hi))
    return min(math.floor((x - Fraction(lo)) * n / (Fraction(hi) - Fraction(lo))), n - 1)


def ref_box_ids(boxes, classes, colors, image_size, n=NUM_COORD_BINS, offset=104):
    class_offset = offset + 4 * n
    color_offset = class_offset + len(SHAPES)
    ids = []
    for box, cls, col in zip(boxes, classes, colors, strict=True):
        for k, x in enumerate(box):
            ids.append(offset + k * n + ref_bin(float(x), 0, image_size, n))
        ids += [class_offset + SHAPES.index(cls), color_offset + COLORS.index(col)]
    return ids


# ------------------------------------------------------------------------------- tokenizer
def test_special_token_ids_are_fixed_and_single_tokens(tok):
    specials = expected_special_tokens()
    assert tok.config.num_special_tokens == len(specials) == 4 + 100 + 256 + 4 + 6 + 3 + 32
    for i, s in enumerate(specials):
        assert tok.id_to_token(i) == s
        assert tok.token_to_id(s) == i
        assert tok.encode(s) == [i], s
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.sos_id) == (0, 1, 2, 3)
    assert tok.sentinel_ids == list(range(4, 104))
    assert [tok.sentinel(i) for i in (0, 57, 99)] == [4, 61, 103]
    for k, axis in enumerate(COORD_AXES):
        assert tok.coord_token_id(axis, 0) == 104 + 64 * k
        assert tok.coord_token_id(axis, 63) == 104 + 64 * k + 63
    assert tok.class_token_id("cube") == specials.index("[CLASS_cube]")
    assert tok.color_token_id("gray") == specials.index("[COLOR_gray]")
    assert tok.meta_token_id("brightness") == specials.index("[META_brightness]")
    assert tok.value_token_id(31) == len(specials) - 1
    assert len(specials) < tok.vocab_size <= 1000
    # Special tokens embedded in text stay whole next to ordinary (lowercased) words.
    ids = tok.encode("A [S_3] RED xmin=12 ymax=63 [CLASS_cylinder] [COLOR_red] v=7 cube")
    assert ids[1:3] == [tok.sentinel(3), tok.encode("red")[0]]
    assert ids[3:8] == [
        tok.coord_token_id("xmin", 12),
        tok.coord_token_id("ymax", 63),
        tok.class_token_id("cylinder"),
        tok.color_token_id("red"),
        tok.value_token_id(7),
    ]


def test_caption_round_trip_is_exact(tok):
    held_out = [
        *make_captions(50, seed=1),
        "A zebra quietly sits near 42 jugs, far away.",
        "Why is the xylophone quiet?",
    ]
    for caption in CORPUS + held_out:
        ids = tok.encode(caption)
        assert tok.unk_id not in ids
        assert tok.decode(ids) == caption.lower()
    # pad / eos are skipped by decode, other special tokens are kept.
    ids = [tok.sentinel(0), *tok.encode("red cube."), tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(ids) == "[S_0] red cube."
    assert tok.decode(np.asarray(ids, dtype=np.int32)) == "[S_0] red cube."


def test_encode_batch_matches_manual_construction(tok):
    texts = [*CORPUS[:12], "", "cube"]
    for max_length in (1, 2, 5, 9, 40):
        got = tok.encode_batch(texts, max_length)
        assert got.dtype == np.int32 and got.shape == (len(texts), max_length)
        for row, text in zip(got, texts, strict=True):
            ids = [*tok.encode(text)[: max_length - 1], tok.eos_id]
            ids += [tok.pad_id] * (max_length - len(ids))
            assert row.tolist() == ids
            assert tok.eos_id in row.tolist()
    assert tok.encode_batch([], 7).shape == (0, 7)
    full = tok.encode_batch(CORPUS[:5], 40)
    assert [tok.decode(r) for r in full] == [c.lower() for c in CORPUS[:5]]


def test_save_load_round_trip(tok, tmp_path):
    path = tok.save(tmp_path / "tok.json")
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]
    loaded = TextTokenizer.load(path)
    assert loaded.config == tok.config
    assert loaded.config.class_words == SHAPES and loaded.config.metadata_fields == FIELDS
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.tokenizer.get_vocab() == tok.tokenizer.get_vocab()
    for caption in CORPUS:
        assert loaded.encode(caption) == tok.encode(caption)
    np.testing.assert_array_equal(loaded.encode_batch(CORPUS, 16), tok.encode_batch(CORPUS, 16))
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
    # The file is still a plain tokenizers JSON: tokenizers itself loads it unchanged.
    plain = Tokenizer.from_file(str(path))
    assert plain.encode(CORPUS[0], add_special_tokens=False).ids == tok.encode(CORPUS[0])
    assert json.loads(path.read_text())["model"]["mmjax"]["class_words"] == list(SHAPES)


def _plain_tokenizer(specials):
    t = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.decoder = decoders.WordPiece()
    t.train_from_iterator(
        CORPUS,
        trainer=trainers.WordPieceTrainer(
            vocab_size=300, special_tokens=specials, show_progress=False
        ),
    )
    return t


def test_load_plain_tokenizers_json(tmp_path):
    plain = _plain_tokenizer(["[UNK]", "<pad>", "</s>"])
    plain.enable_padding(pad_id=1, pad_token="<pad>")  # must not leak into encode_batch
    plain.save(str(tmp_path / "plain.json"))
    tok = TextTokenizer.load(tmp_path / "plain.json")
    assert tok.config is None
    for caption in CORPUS[:20]:
        ids = plain.encode(caption, add_special_tokens=False).ids
        assert tok.encode(caption) == ids
        assert tok.decode(ids) == caption.lower()
    assert (tok.pad_id, tok.eos_id) == (1, 2)
    batch = tok.encode_batch(["red cube", CORPUS[0]], 6)
    assert batch[0].tolist() == [*tok.encode("red cube"), 2, 1, 1, 1]
    assert batch[1].tolist() == [*tok.encode(CORPUS[0])[:5], 2]
    with pytest.raises(ValueError, match="plain tokenizers JSON"):
        _ = tok.sentinel_ids
    with pytest.raises(ValueError, match="plain tokenizers JSON"):
        boxes_to_tokens(tok, [[0, 0, 1, 1]], ["cube"], ["red"], image_size=8)
    with pytest.raises(ValueError, match="plain tokenizers JSON"):
        tokens_to_metadata(tok, [3, 4], ranges={})
    # A BERT-style vocabulary has no end-of-sequence token: a clear error, not a guess.
    _plain_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"]).save(str(tmp_path / "bert.json"))
    bert = TextTokenizer.load(tmp_path / "bert.json")
    assert bert.decode(bert.encode("A red cube.")) == "a red cube."
    with pytest.raises(ValueError, match="end-of-sequence"):
        bert.encode_batch(["a"], 4)


# ------------------------------------------------------------------------------- serializers
def test_box_round_trip_random_floats(tok):
    rng = np.random.default_rng(0)
    for image_size in (224, 100, 37):
        n = 40
        xy = rng.uniform(0, image_size, size=(n, 4))
        boxes = np.stack(
            [
                np.minimum(xy[:, 0], xy[:, 2]),
                np.minimum(xy[:, 1], xy[:, 3]),
                np.maximum(xy[:, 0], xy[:, 2]),
                np.maximum(xy[:, 1], xy[:, 3]),
            ],
            axis=1,
        )
        boxes[0] = [0, 0, image_size, image_size]  # the range end points
        classes = [SHAPES[i] for i in rng.integers(0, len(SHAPES), n)]
        colors = [COLORS[i] for i in rng.integers(0, len(COLORS), n)]
        ids = boxes_to_tokens(tok, boxes, classes, colors, image_size=image_size)
        assert ids == ref_box_ids(boxes, classes, colors, image_size)
        got, got_cls, got_col = tokens_to_boxes(tok, ids, image_size=image_size)
        width = image_size / NUM_COORD_BINS
        assert got.shape == (n, 4)
        assert np.all(np.abs(got - boxes) <= width / 2 + 1e-9)
        assert got_cls == classes and got_col == colors
        # Text form: xmin=a ymin=b xmax=c ymax=d [CLASS_..] [COLOR_..]
        first = tok.decode(ids[:6]).split()
        assert [t.split("=")[0] for t in first[:4]] == list(COORD_AXES)
        assert first[4:] == [f"[CLASS_{classes[0]}]", f"[COLOR_{colors[0]}]"]


def test_box_bin_centres_are_exact(tok):
    image_size = 224  # bin width 3.5: centres are exact binary fractions
    centres = (np.arange(NUM_COORD_BINS) + 0.5) * (image_size / NUM_COORD_BINS)
    boxes = np.stack([centres, centres[::-1] * 0, centres, centres[::-1]], axis=1)
    boxes[:, 1] = centres[0]
    k = len(boxes)
    classes, colors = [SHAPES[i % 4] for i in range(k)], [COLORS[i % 6] for i in range(k)]
    ids = boxes_to_tokens(tok, boxes, classes, colors, image_size=image_size)
    got, got_cls, got_col = tokens_to_boxes(tok, [*ids, tok.eos_id, 0, 0], image_size=image_size)
    np.testing.assert_array_equal(got, boxes)
    assert (got_cls, got_col) == (classes, colors)
    assert boxes_to_tokens(tok, np.zeros((0, 4)), [], [], image_size=8) == []
    empty, c, o = tokens_to_boxes(tok, [tok.eos_id], image_size=8)
    assert empty.shape == (0, 4) and c == [] and o == []


def test_box_exhaustive_small_images():
    shapes, colors = ("cube", "cone"), ("red", "blue")
    small = train_tokenizer(
        CORPUS[:50], vocab_size=600, num_coord_bins=5, class_words=shapes, color_words=colors
    )
    coord_offset = 104
    for image_size in (7, 3, 16):
        width = image_size / 5
        pairs = [(a, b) for a in range(image_size) for b in range(a, image_size)]
        boxes = np.array(
            [[x0, y0, x1, y1] for (x0, x1), (y0, y1) in itertools.product(pairs, pairs)],
            dtype=np.int32,
        )
        cls_ids = np.arange(len(boxes)) % 2
        col_ids = (np.arange(len(boxes)) // 2) % 2
        ids = scene_boxes_to_tokens(
            small,
            boxes,
            cls_ids,
            col_ids,
            class_words=shapes,
            color_words=colors,
            image_size=image_size,
        )
        ref = []
        for box, c, o in zip(boxes, cls_ids, col_ids, strict=True):
            ref += [
                coord_offset + 5 * k + ref_bin(int(x), 0, image_size, 5) for k, x in enumerate(box)
            ]
            ref += [coord_offset + 20 + c, coord_offset + 22 + o]
        assert ids == ref
        fb, fc, fo = tokens_to_boxes(small, ids, image_size=image_size)
        assert np.all(np.abs(fb - boxes) <= width / 2 + 1e-9)
        assert fc == [shapes[i] for i in cls_ids] and fo == [colors[i] for i in col_ids]
        ib, ic, io = tokens_to_scene_boxes(
            small, ids, class_words=shapes, color_words=colors, image_size=image_size
        )
        assert ib.dtype == np.int32 and np.all(np.abs(ib - boxes) <= width)
        assert np.all((ib >= 0) & (ib <= image_size - 1))
        assert np.all(ib[:, 0] <= ib[:, 2]) and np.all(ib[:, 1] <= ib[:, 3])
        np.testing.assert_array_equal(ic, cls_ids)
        np.testing.assert_array_equal(io, col_ids)
        if image_size <= 5:  # at most one pixel per bin: integer boxes come back exactly
            np.testing.assert_array_equal(ib, boxes)
        # Decoded pixels lie inside their bins: serializing them again gives the same tokens.
        again = scene_boxes_to_tokens(
            small, ib, ic, io, class_words=shapes, color_words=colors, image_size=image_size
        )
        assert again == ids


def test_scene_boxes_exact_when_bins_cover_pixels(tok):
    for image_size in (64, 40):  # image_size <= num_coord_bins: integer boxes come back exactly
        xs = np.arange(image_size)
        boxes = np.stack([xs, xs[::-1] // 2, np.maximum(xs, image_size - 1 - xs), xs[::-1]], 1)
        boxes[:, 1] = np.minimum(boxes[:, 1], boxes[:, 3])
        cls_ids, col_ids = xs % 4, xs % 6
        ids = scene_boxes_to_tokens(
            tok,
            boxes,
            cls_ids,
            col_ids,
            class_words=SHAPES,
            color_words=COLORS,
            image_size=image_size,
        )
        ib, ic, io = tokens_to_scene_boxes(
            tok, ids, class_words=SHAPES, color_words=COLORS, image_size=image_size
        )
        np.testing.assert_array_equal(ib, boxes)
        np.testing.assert_array_equal(ic, cls_ids)
        np.testing.assert_array_equal(io, col_ids)


def test_scene_padded_form(tok):
    boxes = np.array(
        [[1, 2, 30, 40], [-1, -1, -1, -1], [5, 5, 5, 5], [0, 0, 63, 63], [-1] * 4, [-1] * 4],
        dtype=np.int32,
    )
    cls_ids = np.array([2, -1, 0, 3, -1, -1])
    col_ids = np.array([1, -1, 5, 0, -1, -1])
    ids = scene_boxes_to_tokens(
        tok, boxes, cls_ids, col_ids, class_words=SHAPES, color_words=COLORS, image_size=64
    )
    valid = [0, 2, 3]
    assert ids == boxes_to_tokens(
        tok,
        boxes[valid],
        [SHAPES[i] for i in cls_ids[valid]],
        [COLORS[i] for i in col_ids[valid]],
        image_size=64,
    )
    ib, ic, io = tokens_to_scene_boxes(
        tok, ids, class_words=SHAPES, color_words=COLORS, image_size=64, max_boxes=6
    )
    order = [*valid, 1, 4, 5]  # valid rows first, then padding
    np.testing.assert_array_equal(ib, boxes[order])
    np.testing.assert_array_equal(ic, cls_ids[order])
    np.testing.assert_array_equal(io, col_ids[order])
    with pytest.raises(ValueError, match="max_boxes=2"):
        tokens_to_scene_boxes(
            tok, ids, class_words=SHAPES, color_words=COLORS, image_size=64, max_boxes=2
        )
    with pytest.raises(ValueError, match="partly -1"):
        scene_boxes_to_tokens(
            tok, [[-1, 0, 3, 3]], [0], [0], class_words=SHAPES, color_words=COLORS, image_size=8
        )
    with pytest.raises(ValueError, match="outside"):
        scene_boxes_to_tokens(
            tok, [[0, 0, 8, 3]], [0], [0], class_words=SHAPES, color_words=COLORS, image_size=8
        )
    with pytest.raises(ValueError, match="class id 7"):
        scene_boxes_to_tokens(
            tok, [[0, 0, 3, 3]], [7], [0], class_words=SHAPES, color_words=COLORS, image_size=8
        )


RANGES = {"object_count": (0.0, 64.0), "mean_area": (-1.0, 1.0), "brightness": (0.0, 0.3)}


def test_metadata_round_trip(tok):
    rng = np.random.default_rng(1)
    for _ in range(50):
        values = {f: float(rng.uniform(*RANGES[f])) for f in rng.permutation(FIELDS)}
        ids = metadata_to_tokens(tok, values, ranges=RANGES)
        ref = []
        for f, v in values.items():
            ref += [tok.meta_token_id(f), tok.value_token_id(ref_bin(v, *RANGES[f], 32))]
        assert ids == ref
        got = tokens_to_metadata(tok, ids, ranges=RANGES)
        assert list(got) == list(values)
        for f, v in values.items():
            lo, hi = RANGES[f]
            assert abs(got[f] - v) <= (hi - lo) / 32 / 2 + 1e-12
    # Bin centres decode exactly; range end points land in the end bins.
    centres = {"object_count": 2.0 * 7 + 1.0, "mean_area": -1.0 + 21.5 / 16}
    got = tokens_to_metadata(tok, metadata_to_tokens(tok, centres, ranges=RANGES), ranges=RANGES)
    assert got == centres
    ends = {"object_count": 64.0, "mean_area": -1.0}
    assert metadata_to_tokens(tok, ends, ranges=RANGES)[1::2] == [
        tok.value_token_id(31),
        tok.value_token_id(0),
    ]
    # Out of range values clip to the first / last bin.
    clipped = {"object_count": 1e6, "mean_area": -5.0, "brightness": -0.1}
    got = tokens_to_metadata(
        tok, [*metadata_to_tokens(tok, clipped, ranges=RANGES), tok.eos_id], ranges=RANGES
    )
    assert got == {"object_count": 63.0, "mean_area": -1.0 + 1 / 32, "brightness": 0.3 / 64}


# ------------------------------------------------------------------------------- bad input
def test_load_errors(tok, tmp_path):
    missing = tmp_path / "nope" / "tok.json"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        TextTokenizer.load(missing)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"version": "1.0", "model": {')
    with pytest.raises(ValueError, match=re.escape(str(corrupt))):
        TextTokenizer.load(corrupt)
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match=re.escape(str(other))):
        TextTokenizer.load(other)
    # Settings that disagree with the vocabulary are caught on load.
    d = json.loads(tok.to_json_str())
    d["model"]["mmjax"]["num_coord_bins"] = 63
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*ymin=0.*id 167"):
        TextTokenizer.load(bad)


def test_training_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CORPUS, vocab_size=300)  # 4 + 100 + 256 + 32 = 392 special tokens
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CORPUS, vocab_size=392)
    with pytest.raises(ValueError, match="num_sentinels"):
        train_tokenizer(CORPUS, num_sentinels=99)
    with pytest.raises(ValueError, match="duplicate"):
        train_tokenizer(CORPUS, class_words=("cube", "cube"))
    with pytest.raises(TypeError):
        train_tokenizer("a single string")


def test_encode_batch_and_lookup_errors(tok):
    for bad in (0, -3):
        with pytest.raises(ValueError, match="max_length"):
            tok.encode_batch(["a red cube"], bad)
    with pytest.raises(ValueError, match="sentinel index 100"):
        tok.sentinel(100)
    with pytest.raises(ValueError, match="coordinate bin 64"):
        tok.coord_token_id("xmin", 64)
    with pytest.raises(ValueError, match="'zmin'"):
        tok.coord_token_id("zmin", 0)
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    with pytest.raises(TypeError):
        tok.coord_token_id("xmin", 2.5)


def test_serializer_errors(tok):
    with pytest.raises(ValueError, match="'torus'"):
        boxes_to_tokens(tok, [[0, 0, 1, 1]], ["torus"], ["red"], image_size=8)
    with pytest.raises(ValueError, match="'teal'"):
        boxes_to_tokens(tok, [[0, 0, 1, 1]], ["cube"], ["teal"], image_size=8)
    with pytest.raises(ValueError, match="outside"):
        boxes_to_tokens(tok, [[0, 0, 9, 1]], ["cube"], ["red"], image_size=8)
    with pytest.raises(ValueError, match="x_min > x_max"):
        boxes_to_tokens(tok, [[3, 0, 2, 1]], ["cube"], ["red"], image_size=8)
    with pytest.raises(ValueError, match="2 classes"):
        boxes_to_tokens(tok, [[0, 0, 1, 1]], ["cube", "cone"], ["red"], image_size=8)
    with pytest.raises(ValueError, match=r"shape \[N, 4\]"):
        boxes_to_tokens(tok, [[0, 0, 1]], ["cube"], ["red"], image_size=8)

    ids = boxes_to_tokens(
        tok, [[0, 0, 4, 4], [1, 2, 3, 4]], ["cube", "cone"], ["red", "blue"], image_size=8
    )
    with pytest.raises(ValueError, match=r"position 11: expected a colour token.*sequence ends"):
        tokens_to_boxes(tok, ids[:-1], image_size=8)
    with pytest.raises(ValueError, match=r"position 8: expected a 'xmax=' coordinate.*ends"):
        tokens_to_boxes(tok, ids[:8], image_size=8)
    word = tok.encode("red")[0]
    with pytest.raises(
        ValueError, match=r"position 7: expected a 'ymin=' coordinate token, got 'red'"
    ):
        tokens_to_boxes(tok, [*ids[:7], word, *ids[8:]], image_size=8)
    swapped = ids.copy()
    swapped[2], swapped[3] = ids[3], ids[2]  # ymax where xmax belongs
    with pytest.raises(ValueError, match="position 2: expected a 'xmax=' coordinate token"):
        tokens_to_boxes(tok, swapped, image_size=8)
    with pytest.raises(
        ValueError, match=r"position 0: expected a 'xmin=' .*out-of-vocabulary id -1"
    ):
        tokens_to_boxes(tok, [-1, *ids[1:]], image_size=8)
    with pytest.raises(ValueError, match="position 5: expected a colour token, got '\\[CLASS_"):
        tokens_to_boxes(tok, [*ids[:5], ids[4], *ids[6:]], image_size=8)

    with pytest.raises(ValueError, match="'shininess'"):
        metadata_to_tokens(tok, {"object_count": 3, "shininess": 0.5}, ranges=RANGES)
    with pytest.raises(ValueError, match="'brightness'"):
        metadata_to_tokens(tok, {"brightness": 0.1}, ranges={"object_count": (0, 1)})
    with pytest.raises(ValueError, match="non-finite"):
        metadata_to_tokens(tok, {"brightness": float("nan")}, ranges=RANGES)
    meta = metadata_to_tokens(tok, {"object_count": 3, "brightness": 0.1}, ranges=RANGES)
    with pytest.raises(ValueError, match=r"position 3: expected a value token.*ends"):
        tokens_to_metadata(tok, meta[:3], ranges=RANGES)
    with pytest.raises(ValueError, match=r"position 1: expected a value token.*got 'red'"):
        tokens_to_metadata(tok, [meta[0], word, *meta[2:]], ranges=RANGES)
    with pytest.raises(ValueError, match="position 2: expected a metadata field token"):
        tokens_to_metadata(tok, [*meta[:2], meta[1], meta[1]], ranges=RANGES)
    with pytest.raises(ValueError, match="repeated"):
        tokens_to_metadata(tok, meta[:2] * 2, ranges=RANGES)
