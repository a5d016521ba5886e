"""Tests for ml-4m's text layout in mmjax.text: loading an ml-4m tokenizer JSON, ml-4m's det and
caption text, and its [EOS] / sentinel framing.

The tokenizer is a small WordPiece JSON built here in ml-4m's layout ([PAD] [UNK] [SOS] [EOS],
sentinels [S_0].., coordinate tokens v0=0 .. v3=<n-1>, class names as added tokens). The
references restate ml-4m's rules in plain Python: DetectionTransform.convert_bboxes_to_string
(``v{a}={round(c * (bins - 1))}``), plotting_utils.convert_string_to_bboxes (``bin / (bins-1)``,
class words re-joined), masking.simple_span_masking and merge_span_masking.
"""

import json
import random
import string
from collections import defaultdict

import numpy as np
import pytest
from tokenizers import Tokenizer

from mmjax.text import (
    Ml4mTextTokenizer,
    TextTokenizer,
    caption_to_ml4m_ids,
    det_to_ml4m_ids,
    det_to_ml4m_text,
    load_ml4m_tokenizer,
    ml4m_as_input,
    ml4m_as_target,
    ml4m_box_order,
    ml4m_ids_to_caption,
    ml4m_ids_to_det,
    ml4m_merge_spans,
    ml4m_sequence,
    ml4m_span_mask,
    ml4m_strip_target,
    ml4m_text_to_det,
)

BINS = 1000  # ml-4m's coord_bins
NUM_SENTINELS = 20
CLASSES = ("person", "sports ball", "dog", "hair drier")  # added tokens, as in ml-4m's file
WORDS = ("a", "the", "on", "grass", "ball", "traffic", "cone", "red", "dog", "runs", "##s")


# ---------------------------------------------------------------------------------- fixture
def _added(i, content, *, single_word, normalized):
    return {
        "id": i,
        "content": content,
        "single_word": single_word,
        "lstrip": False,
        "rstrip": False,
        "normalized": normalized,
        "special": True,
    }


def ml4m_json(
    *,
    core=("[PAD]", "[UNK]", "[SOS]", "[EOS]"),
    sentinels=range(NUM_SENTINELS),
    bins=BINS,
    coord_axes=("v0", "v1", "v2", "v3"),
    classes=CLASSES,
    not_added=(),
) -> dict:
    """A tokenizers JSON laid out as ml-4m's text_tokenizer_4m_wordpiece_30k.json is."""
    vocab: dict[str, int] = {}
    added = []

    def add(token, **flags):
        i = len(vocab)
        vocab[token] = i
        if token not in not_added:
            added.append(_added(i, token, **flags))

    for t in core:
        add(t, single_word=False, normalized=False)
    for k in sentinels:
        add(f"[S_{k}]", single_word=True, normalized=False)
    for axis in coord_axes:
        for b in range(bins):
            add(f"{axis}={b}", single_word=True, normalized=False)
    for c in classes:
        add(c, single_word=True, normalized=True)
    for ch in string.punctuation + string.digits + string.ascii_lowercase:
        vocab.setdefault(ch, len(vocab))
    for ch in string.digits + string.ascii_lowercase:
        vocab.setdefault("##" + ch, len(vocab))
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": True,
            "handle_chinese_chars": True,
            "strip_accents": None,
            "lowercase": True,
        },
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {
            "type": "WordPiece",
            "unk_token": "[UNK]",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": vocab,
        },
    }


@pytest.fixture(scope="module")
def ml4m_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ml4m") / "text_tokenizer.json"
    path.write_text(json.dumps(ml4m_json()))
    return path


@pytest.fixture(scope="module")
def tok(ml4m_file):
    return load_ml4m_tokenizer(ml4m_file)


@pytest.fixture(scope="module")
def raw(ml4m_file):
    """The file as ml-4m uses it: a plain tokenizers.Tokenizer."""
    return Tokenizer.from_file(str(ml4m_file))


# ---------------------------------------------------------------------------------- references
def ref_det_string(boxes, classes, bins):
    """DetectionTransform.convert_bboxes_to_string, restated."""
    words = []
    for (x0, y0, x1, y1), c in zip(boxes, classes, strict=True):
        words += [
            f"v0={round(x0 * (bins - 1))}",
            f"v1={round(y0 * (bins - 1))}",
            f"v2={round(x1 * (bins - 1))}",
            f"v3={round(y1 * (bins - 1))}",
            c,
        ]
    return " ".join(words)


def ref_parse(text, bins):
    """plotting_utils.convert_string_to_bboxes, restated."""
    boxes = []
    for token in text.split(" "):
        if "=" in token:
            coord = float(token.split("=")[1]) / (bins - 1)
            if token.startswith("v0="):
                boxes.append([coord])
            else:
                boxes[-1].append(coord)
        elif len(boxes[-1]) == 4:
            boxes[-1].append(token)
        else:
            boxes[-1][4] = " ".join([boxes[-1][4], token])
    return [b for b in boxes if len(b) == 5]


def ref_span_mask(seq, masks, sentinel_to_id):
    """masking.simple_span_masking for a given mask (True = masked), restated."""
    inp, tgt = [], []
    prev, count = False, 0
    for token, mask in zip(seq, masks, strict=True):
        if mask:
            if not prev:
                count += 1
                inp.append(sentinel_to_id[count])
                tgt.append(sentinel_to_id[count])
            prev = True
            tgt.append(token)
        else:
            prev = False
            inp.append(token)
    tgt.append(sentinel_to_id[count + 1])
    return inp, tgt


def ref_merge(inp, tgt, sentinel_ids):
    """text_tokenizer.merge_span_masking, restated."""
    splits, cur = defaultdict(list), None
    for t in tgt:
        if t in sentinel_ids:
            cur = t
        else:
            splits[cur].append(t)
    out = []
    for t in inp:
        out.extend(splits[t]) if t in sentinel_ids else out.append(t)
    return out


def ref_sentinel_to_id(raw):
    """tokenizer.get_sentinel_to_id_mapping, restated."""
    items = {k: v for k, v in raw.get_vocab().items() if k.startswith("[S_")}
    return {int(k.split("_")[1][:-1]): v for k, v in sorted(items.items(), key=lambda x: x[1])}


def random_boxes(rng, n, bins):
    rows = []
    for _ in range(n):
        if rng.random() < 0.4:  # coordinates on half bins: ties of round()
            v = [(rng.randrange(bins - 1) + 0.5) / (bins - 1) for _ in range(4)]
        else:
            v = [rng.random() for _ in range(4)]
        rows.append([min(v[0], v[2]), min(v[1], v[3]), max(v[0], v[2]), max(v[1], v[3])])
    return np.asarray(rows, np.float64).reshape(-1, 4)


# ---------------------------------------------------------------------------------- loading
def test_roles_follow_ml4m_ids(tok, raw):
    v = raw.get_vocab()
    assert (tok.pad_id, tok.unk_id, tok.sos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.start_id == v["[S_1]"] == 5
    assert tok.sentinel_ids == [v[f"[S_{k}]"] for k in range(1, NUM_SENTINELS)]
    assert tok.sentinel(0) == v["[S_0]"] and tok.sentinel(7) == v["[S_7]"]
    assert tok.num_coord_bins == BINS
    assert tok.layout.class_words == CLASSES
    assert tok.layout.coord_from_id(v["v2=17"]) == (2, 17)
    assert tok.layout.coord_from_id(v["person"]) is None
    assert tok.vocab_size == raw.get_vocab_size()
    # mmjax-layout accessors are not available on an ml-4m tokenizer
    with pytest.raises(ValueError, match="ml-4m tokenizer"):
        tok.coord_token_id("xmin", 0)
    with pytest.raises(ValueError, match=r"\[S_20\]"):
        tok.sentinel(NUM_SENTINELS)


def test_plain_load_is_unchanged_and_save_round_trips(tok, ml4m_file, tmp_path):
    plain = TextTokenizer.load(ml4m_file)
    assert type(plain) is TextTokenizer and plain.config is None
    assert (plain.pad_id, plain.eos_id) == (0, 3)
    with pytest.raises(TypeError, match="expected an Ml4mTextTokenizer"):
        det_to_ml4m_ids(plain, [[0, 0, 1, 1]], ["dog"])
    assert isinstance(tok, Ml4mTextTokenizer) and isinstance(tok, TextTokenizer)
    again = load_ml4m_tokenizer(tok.save(tmp_path / "copy.json"))
    text = "v0=1 v1=2 v2=3 v3=4 sports ball a red dog"
    assert again.encode(text) == tok.encode(text)
    assert again.layout == tok.layout


def _write(tmp_path, d) -> str:
    p = tmp_path / "t.json"
    p.write_text(d if isinstance(d, str) else json.dumps(d))
    return str(p)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(core=("[PAD]", "[UNK]", "[SOS]")), r"no \[EOS\] token"),
        (dict(core=("[UNK]", "[SOS]", "[EOS]")), r"no \[PAD\] token"),
        (dict(sentinels=[0, 1]), r"no \[S_2\] token"),
        (dict(sentinels=[0, 1, 2, 4]), r"without gaps; missing \[S_3\]"),
        (dict(coord_axes=("v0", "v1", "v2")), r"v3=0 \.\. v3=7 like v0= \(8 bins\), found 0"),
        (dict(not_added=("v1=5",)), r"v1=5 is not an added token"),
        (dict(not_added=("[EOS]",)), r"\[EOS\] is in the vocabulary but not an added token"),
    ],
)
def test_missing_or_malformed_special_tokens_are_named(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_ml4m_tokenizer(_write(tmp_path, ml4m_json(bins=8, **kwargs)))


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not a valid JSON tokenizer file"):
        load_ml4m_tokenizer(_write(tmp_path, '{"model": {'))
    with pytest.raises(ValueError, match="no 'model' object"):
        load_ml4m_tokenizer(_write(tmp_path, {"version": "1.0"}))
    broken = ml4m_json(bins=8)
    broken["model"]["type"] = "NoSuchModel"
    with pytest.raises(ValueError, match="tokenizers could not load this file"):
        load_ml4m_tokenizer(_write(tmp_path, broken))
    with pytest.raises(FileNotFoundError):
        load_ml4m_tokenizer(tmp_path / "absent.json")
    mmjax_layout = ml4m_json(bins=8)
    mmjax_layout["model"]["mmjax"] = {"format_version": 1}
    with pytest.raises(ValueError, match="mmjax-layout tokenizer"):
        load_ml4m_tokenizer(_write(tmp_path, mmjax_layout))


def test_tokenizer_without_coordinates_does_captions_but_not_det(tmp_path):
    tok = load_ml4m_tokenizer(_write(tmp_path, ml4m_json(bins=0)))
    assert tok.num_coord_bins == 0
    assert ml4m_ids_to_caption(tok, caption_to_ml4m_ids(tok, "a red dog")) == "a red dog"
    with pytest.raises(ValueError, match="no box-coordinate tokens"):
        det_to_ml4m_ids(tok, [[0, 0, 1, 1]], ["dog"])


# ---------------------------------------------------------------------------------- det text
@pytest.mark.parametrize("bins", [BINS, 17, 2])
def test_det_text_matches_ml4m_rule_and_round_trips(bins):
    rng = random.Random(bins)
    for _ in range(50):
        boxes = random_boxes(rng, rng.randrange(6), bins)
        classes = [rng.choice([*CLASSES, "traffic cone"]) for _ in range(len(boxes))]
        text = det_to_ml4m_text(boxes, classes, num_bins=bins)
        assert text == ref_det_string(boxes.tolist(), classes, bins)
        parsed, names = ml4m_text_to_det(text, num_bins=bins)
        ref = ref_parse(text, bins) if text else []
        assert names == classes == [r[4] for r in ref]
        np.testing.assert_array_equal(parsed, np.asarray([r[:4] for r in ref]).reshape(-1, 4))
        assert np.all(np.abs(parsed - boxes) <= 0.5 / (bins - 1) + 1e-12)
        assert det_to_ml4m_text(parsed, names, num_bins=bins) == text


def test_det_quantisation_ties_go_to_even():
    # 16 = bins - 1, so (k + 0.5) / 16 * 16 is exactly k + 0.5: Python's round picks the even k
    text = det_to_ml4m_text([[0.5 / 16, 1.5 / 16, 2.5 / 16, 15.5 / 16]], ["dog"], num_bins=17)
    assert text == "v0=0 v1=2 v2=2 v3=16 dog"


def test_det_text_parse_errors_and_eos():
    with pytest.raises(ValueError, match=r"word 1 'v2=3': expected v1="):
        ml4m_text_to_det("v0=1 v2=3 v1=2 v3=4 dog")
    with pytest.raises(ValueError, match=r"word 0 'dog': expected v0="):
        ml4m_text_to_det("dog v0=1 v1=2 v2=3 v3=4")
    with pytest.raises(ValueError, match=r"bin outside \[0, 16\]"):
        ml4m_text_to_det("v0=1 v1=2 v2=3 v3=17 dog", num_bins=17)
    with pytest.raises(ValueError, match="ends inside box 1"):
        ml4m_text_to_det("v0=1 v1=2 v2=3 v3=4 dog v0=5 v1=6")
    boxes, names = ml4m_text_to_det("v0=1 v1=2 v2=3 v3=4 dog v0=5 v1=6", drop_incomplete=True)
    assert names == ["dog"] and boxes.shape == (1, 4)
    boxes, names = ml4m_text_to_det("v0=0 v1=0 v2=999 v3=999 sports ball [EOS] [PAD] [PAD]")
    assert names == ["sports ball"] and boxes.tolist() == [[0.0, 0.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    ("boxes", "classes", "match"),
    [
        ([[0.1, 0.2, 1.2, 0.3]], ["dog"], r"normalised to \[0, 1\]"),
        ([[0.5, 0.2, 0.4, 0.3]], ["dog"], "xmin > xmax"),
        ([[0.1, 0.2, 0.3]], ["dog"], r"shape \[N, 4\]"),
        ([[0.1, 0.2, 0.3, 0.4]], [], "1 boxes but 0 class names"),
        ([[0.1, 0.2, 0.3, 0.4]], ["hot  dog"], "single spaces"),
        ([[0.1, 0.2, 0.3, 0.4]], ["a=b"], "contains '='"),
        ([[0.1, np.nan, 0.3, 0.4]], ["dog"], "finite"),
    ],
)
def test_bad_boxes_are_rejected(boxes, classes, match):
    with pytest.raises(ValueError, match=match):
        det_to_ml4m_text(boxes, classes)


def test_box_order_matches_ml4m_sorts():
    rng = random.Random(3)
    boxes = random_boxes(rng, 12, 5)  # coarse: repeated keys test stability
    rows = [tuple(b) for b in boxes.tolist()]
    by_dist = sorted(range(len(rows)), key=lambda i: rows[i][0] ** 2 + rows[i][1] ** 2)
    by_area = sorted(
        range(len(rows)),
        key=lambda i: (rows[i][2] - rows[i][0]) * (rows[i][3] - rows[i][1]),
        reverse=True,
    )
    assert ml4m_box_order(boxes).tolist() == by_dist
    assert ml4m_box_order(boxes, "area").tolist() == by_area


# ---------------------------------------------------------------------------------- det ids
def test_det_ids_are_the_tokenizer_encoding_of_ml4m_text(tok, raw):
    rng = random.Random(7)
    v = raw.get_vocab()
    for _ in range(30):
        boxes = random_boxes(rng, rng.randrange(1, 5), BINS)
        classes = [rng.choice([*CLASSES, "traffic cone", "red balls"]) for _ in range(len(boxes))]
        ids = det_to_ml4m_ids(tok, boxes, classes)
        text = ref_det_string(boxes.tolist(), classes, BINS)
        assert ids == raw.encode(text).ids
        coords = [i for i in ids if raw.id_to_token(i)[:2] in ("v0", "v1", "v2", "v3")]
        assert len(coords) == 4 * len(boxes)  # each coordinate is one token
        assert v["sports ball"] in ids or "sports ball" not in classes
        # what ml-4m's plotting code reads from the same ids
        ref = ref_parse(raw.decode(ids, skip_special_tokens=False), BINS)
        parsed, names = ml4m_ids_to_det(tok, [*ids, tok.eos_id, tok.pad_id, 77])
        assert names == classes == [r[4] for r in ref]
        np.testing.assert_array_equal(parsed, np.asarray([r[:4] for r in ref]))


def test_det_ids_reject_names_the_tokenizer_changes(tok):
    with pytest.raises(ValueError, match="'Dog' does not survive"):
        det_to_ml4m_ids(tok, [[0, 0, 1, 1]], ["Dog"])
    with pytest.raises(ValueError, match="does not survive"):
        det_to_ml4m_ids(tok, [[0, 0, 1, 1]], ["[S_3]"])


def test_det_ids_parse_errors(tok, raw):
    v = raw.get_vocab()
    box = [v["v0=1"], v["v1=2"], v["v2=3"], v["v3=4"], v["dog"]]
    with pytest.raises(ValueError, match="position 1: expected a v1= token"):
        ml4m_ids_to_det(tok, [v["v0=1"], v["v2=3"]])
    with pytest.raises(ValueError, match="position 0: expected a v0= token"):
        ml4m_ids_to_det(tok, [v["dog"], *box])
    with pytest.raises(ValueError, match=r"position 5: '\[S_3\]'.*inside a class name"):
        ml4m_ids_to_det(tok, [*box, v["[S_3]"]])
    with pytest.raises(ValueError, match="end inside box 1"):
        ml4m_ids_to_det(tok, [*box, *box[:3]])
    boxes, names = ml4m_ids_to_det(tok, [*box, *box[:3]], drop_incomplete=True)
    assert names == ["dog"] and boxes.tolist() == [[1 / 999, 2 / 999, 3 / 999, 4 / 999]]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ml4m_ids_to_det(tok, [*box, 10**6])


# ---------------------------------------------------------------------------------- captions
def test_caption_ids_and_text_match_ml4m(tok, raw):
    for cap in ["A red dog runs on the grass.", "the ball, the cone!", "zzz 42 qq"]:
        ids = caption_to_ml4m_ids(tok, cap)
        assert ids == raw.encode(cap).ids
        framed = ml4m_sequence(tok, ids)
        # ml-4m: decode(skip_special_tokens=False), then drop ' [EOS]'
        expected = raw.decode(framed, skip_special_tokens=False).replace(" [EOS]", "")
        assert ml4m_ids_to_caption(tok, [*framed, tok.pad_id]) == expected
    assert ml4m_ids_to_caption(tok, caption_to_ml4m_ids(tok, "a red dog.")) == "a red dog."


# ---------------------------------------------------------------------------------- framing
def test_span_masking_matches_ml4m(tok, raw):
    rng = np.random.default_rng(0)
    s2i = ref_sentinel_to_id(raw)
    sentinel_ids = set(s2i.values())
    for _ in range(100):
        n = int(rng.integers(1, 25))
        seq = ml4m_sequence(tok, rng.integers(300, tok.vocab_size, n - 1).tolist())
        mask = rng.random(n) > rng.choice([0.0, 1.0, rng.random()])
        inp, tgt = ml4m_span_mask(tok, seq, mask)
        assert (inp, tgt) == ref_span_mask(seq, mask.tolist(), s2i)
        assert ml4m_merge_spans(tok, inp, tgt) == ref_merge(inp, tgt, sentinel_ids) == seq


def test_whole_sequence_framing(tok, raw):
    v = raw.get_vocab()
    ids = caption_to_ml4m_ids(tok, "a red dog")
    eos, s1, s2 = v["[EOS]"], v["[S_1]"], v["[S_2]"]
    assert ml4m_as_input(tok, ids) == ([*ids, eos], [s1])
    assert ml4m_as_target(tok, ids) == ([], [s1, *ids, eos, s2])
    # ml-4m appends [EOS] before it truncates, so a cut text has no [EOS]
    assert ml4m_sequence(tok, ids, max_tokens=2) == ids[:2]
    assert ml4m_as_input(tok, ids, max_tokens=3)[0] == ids
    # a generated target: [S_1] text [EOS] [S_2], possibly with junk after the final sentinel
    generated = [s1, *ids, eos, s2, v["dog"]]
    assert ml4m_strip_target(tok, generated) == ids
    assert ml4m_merge_spans(tok, [s1], generated) == ref_merge([s1], generated, {s1, s2})
    with pytest.raises(ValueError, match="need 20 sentinels"):
        ml4m_span_mask(tok, list(range(300, 338)), np.arange(38) % 2 == 0)
