"""Any-to-any metrics on the scenes (mmjax.eval.scenes: captions, boxes, colours, baselines)
against brute-force references, hand-computed cases and the scenes' exact ground truth."""

import itertools

import numpy as np
import pytest

from mmjax.data import scenes
from mmjax.data.scenes.constants import COLOR_NAMES, COLOR_RGB, SEMSEG_CLASSES, SHAPE_NAMES
from mmjax.data.scenes.sampling import sample_scene
from mmjax.eval.scenes import (
    box_iou,
    box_iou_match,
    caption_objects,
    caption_recall_precision,
    colour_presence,
    depth_errors,
    frequent_objects_caption_baseline,
    majority_class_baseline,
    mean_depth_baseline,
    mean_image_baseline,
    mean_normals_baseline,
    normals_angular_error,
    objects_caption,
    semseg_miou,
    visible_objects,
)

RES = 64
NUM_SCENES = 50


@pytest.fixture(scope="module")
def examples():
    return [scenes.generate(i, "validation", RES) for i in range(NUM_SCENES)]


def objects_from_scene_params(index, split, instance):
    """Independent ground truth: the sampled scene's objects whose instance id has a pixel."""
    scene = sample_scene(index, split)
    ids = np.unique(instance)
    return {
        (COLOR_NAMES[o.color], SHAPE_NAMES[o.shape])
        for k, o in enumerate(scene.objects, start=1)
        if k in ids
    }


# ---------------------------------------------------------------------------------- captions
def test_caption_objects_equal_visible_objects(examples):
    for i, e in enumerate(examples):
        truth = objects_from_scene_params(i, "validation", e["instance"])
        assert caption_objects(e["caption"]) == truth, e["caption"]
        assert visible_objects(e) == truth
        out = caption_recall_precision(e["caption"], visible_objects(e))
        assert set(out.values()) == {1.0}


def test_caption_objects_after_tokenizer_round_trip():
    from mmjax.data.text_vocab import scenes_text_tokenizer

    tok = scenes_text_tokenizer(num_examples=100, vocab_size=600)
    for i in range(100, 120):
        caption = scenes.generate(i, "validation", 32)["caption"]
        decoded = tok.decode(tok.encode(caption))
        assert decoded != caption  # lowercased, re-spaced
        assert caption_objects(decoded) == caption_objects(caption)


def test_caption_objects_hand_cases():
    text = "Two RED cubes, a blue small sphere and a cylinder. The large green cylinder."
    assert caption_objects(text) == {("red", "cube"), ("blue", "sphere"), ("green", "cylinder")}
    assert caption_objects("An empty floor with no objects.") == set()
    with pytest.raises(ValueError, match="text must be a str"):
        caption_objects(None)


def test_caption_recall_precision_hand_case():
    true = {("red", "cube"), ("blue", "sphere")}
    pred = "A small red cube, a large green sphere and a yellow cylinder."
    out = caption_recall_precision(pred, true)
    assert out["pair_recall"] == 0.5 and out["pair_precision"] == pytest.approx(1 / 3)
    assert out["shape_recall"] == 1.0 and out["shape_precision"] == pytest.approx(2 / 3)
    # Shape multisets: one predicted cube matches one of two true cubes.
    out = caption_recall_precision("a red cube", {("blue", "cube"), ("gray", "cube")})
    assert (out["pair_recall"], out["shape_recall"], out["shape_precision"]) == (0.0, 0.5, 1.0)
    out = caption_recall_precision("nothing here", set())
    assert set(out.values()) == {1.0}
    with pytest.raises(ValueError, match="true_objects must hold"):
        caption_recall_precision("a red cube", {("pink", "cube")})
    with pytest.raises(ValueError, match="true_objects must be an iterable"):
        caption_recall_precision("a red cube", "red cube")
    with pytest.raises(ValueError, match="pred_text must be a str"):
        caption_recall_precision(["a red cube"], set())


# ---------------------------------------------------------------------------------- boxes
def test_box_iou_known_and_brute_force():
    # Inclusive pixel boxes: 10x10 and 10x10 sharing 5 columns -> 50 / 150.
    assert box_iou([[0, 0, 9, 9]], [[5, 0, 14, 9]])[0, 0] == pytest.approx(1 / 3)
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]], inclusive=False)[0, 0] == pytest.approx(
        1 / 3
    )
    assert box_iou([[0, 0, 3, 3]], [[4, 4, 6, 6]])[0, 0] == 0.0
    rng = np.random.default_rng(3)
    lo = rng.integers(0, 20, (12, 2))
    boxes = np.concatenate([lo, lo + rng.integers(0, 12, (12, 2))], axis=1)
    iou = box_iou(boxes[:6], boxes[6:])
    for i, j in itertools.product(range(6), range(6, 12)):
        masks = []
        for x0, y0, x1, y1 in (boxes[i], boxes[j]):
            m = np.zeros((40, 40), bool)
            m[y0 : y1 + 1, x0 : x1 + 1] = True
            masks.append(m)
        ref = np.sum(masks[0] & masks[1]) / np.sum(masks[0] | masks[1])
        assert iou[i, j - 6] == pytest.approx(ref)


def test_box_iou_match_on_scene_boxes(examples):
    e = next(e for e in examples if np.sum(e["box_instance"] > 0) >= 3)
    b, cls, col = e["boxes"], e["box_class"], e["box_color"]
    n = int(np.sum(e["box_instance"] > 0))
    out = box_iou_match(b, b, cls, cls, col, col)
    assert out["mean_iou"] == 1.0 and out["num_true"] == n == out["num_pred"]
    # Rows shuffled (padding included): the same matches.
    perm = np.random.default_rng(4).permutation(len(b))
    assert box_iou_match(b[perm], b, cls[perm], cls, col[perm], col)["mean_iou"] == 1.0
    # One wrong colour: that true box stays unmatched (the others take their exact twins).
    bad = col.copy()
    bad[0] = (bad[0] + 1) % len(COLOR_NAMES)
    out = box_iou_match(b, b, cls, cls, bad, col)
    assert out["matched_iou"][0] == 0.0 and np.all(out["matched_iou"][1:n] == 1.0)
    assert out["recall"] == out["precision"] == pytest.approx((n - 1) / n)
    assert out["mean_iou"] == pytest.approx((n - 1) / n)
    # An extra predicted box lowers only the precision.
    extra = np.concatenate([b[:n], [[0, 0, 2, 2]]])
    out = box_iou_match(extra, b)
    assert out["mean_iou"] == 1.0 and out["precision"] == pytest.approx(n / (n + 1))


def test_box_iou_match_after_token_round_trip(examples):
    from mmjax.data.text_vocab import CLASS_WORDS, COLOR_WORDS, scenes_text_tokenizer
    from mmjax.text import scene_boxes_to_tokens, tokens_to_scene_boxes

    tok = scenes_text_tokenizer(num_examples=20, vocab_size=600)  # 64 coordinate bins
    for e in examples[:10]:
        ids = scene_boxes_to_tokens(
            tok,
            e["boxes"],
            e["box_class"],
            e["box_color"],
            class_words=CLASS_WORDS,
            color_words=COLOR_WORDS,
            image_size=RES,
        )
        b, cls, col = tokens_to_scene_boxes(
            tok, ids, class_words=CLASS_WORDS, color_words=COLOR_WORDS, image_size=RES, max_boxes=6
        )
        out = box_iou_match(b, e["boxes"], cls, e["box_class"], col, e["box_color"])
        assert out["mean_iou"] == 1.0 and out["recall"] == out["precision"] == 1.0


def test_box_iou_match_greedy_hand_case():
    true = np.array([[0, 0, 9, 9], [5, 0, 14, 9]])
    # pred 0 equals true 0 (IoU 1, taken first); pred 1 overlaps true 0 (60 / 140) and true 1.
    pred = np.array([[0, 0, 9, 9], [4, 0, 13, 9]])
    out = box_iou_match(pred, true)
    assert out["matched_iou"][0] == 1.0
    assert out["matched_iou"][1] == pytest.approx(90 / 110)  # [5..13] of [4..14]
    assert out["recall"] == 1.0
    assert box_iou_match(np.zeros((0, 4)), np.zeros((0, 4)))["mean_iou"] == 1.0
    assert box_iou_match(true, -np.ones((2, 4)))["mean_iou"] == 0.0
    out = box_iou_match(-np.ones((6, 4)), true)
    assert out["mean_iou"] == 0.0 and out["precision"] == 1.0 and out["num_pred"] == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pred_boxes=np.zeros((2, 3))), r"pred_boxes must have shape \[M, 4\]"),
        (dict(pred_boxes=[[5, 0, 4, 3]]), "pred_boxes has rows with x_min > x_max"),
        (dict(true_boxes=[[-1, -1, -1, 3]]), "true_boxes has negative coordinates"),
        (dict(pred_classes=[2]), "must both be given or both be None"),
        (dict(pred_classes=[2, 3], true_classes=[2]), "pred_classes must have one id per box"),
        (dict(pred_classes=[2.0], true_classes=[2]), "pred_classes must hold integer ids"),
        (dict(iou_threshold=0.0), r"iou_threshold must lie in \(0, 1\]"),
    ],
)
def test_box_iou_match_bad_input(kwargs, match):
    args = dict(pred_boxes=[[0, 0, 3, 3]], true_boxes=[[0, 0, 3, 3]]) | kwargs
    with pytest.raises(ValueError, match=match):
        box_iou_match(**args)


# ---------------------------------------------------------------------------------- colours
def test_colour_presence_on_real_scenes(examples):
    present, absent = [], []
    for e in examples:
        colours = {c for c, _ in visible_objects(e)}
        others = [c for c in COLOR_NAMES if c not in colours]
        if colours:
            present.append(colour_presence(e["rgb"], colours)["fraction"])
        absent.append(colour_presence(e["rgb"], others)["fraction"])
    # Bounds below the exact-render rates measured in docs/experiments.md.
    assert np.mean(present) >= 0.97
    assert np.mean(absent) <= 0.02


def test_colour_presence_synthetic():
    img = np.tile(np.array([0.72, 0.78, 0.86]), (32, 32, 1))  # sky
    img[:8, :8] = 0.6 * COLOR_RGB[1]  # a shaded red patch, 6% of the image
    img[20, 20] = COLOR_RGB[2]  # one blue pixel: under 0.25%
    out = colour_presence(img, ["red", 2, "gray", "red"])
    assert out["present"] == {"red": True, "blue": False, "gray": False}
    assert out["fraction"] == pytest.approx(1 / 3)
    assert out["pixel_fraction"]["red"] == pytest.approx(64 / 1024)
    assert colour_presence(img, [2], min_fraction=0.0)["fraction"] == 1.0
    assert colour_presence(img, [])["fraction"] == 1.0


def test_colour_presence_bad_input():
    img = np.zeros((8, 8, 3))
    with pytest.raises(ValueError, match=r"image values must lie in \[0, 1\]"):
        colour_presence(img + 255, ["red"])
    with pytest.raises(ValueError, match=r"image must be one rgb image"):
        colour_presence(img[None], ["red"])
    with pytest.raises(ValueError, match="colours must hold names"):
        colour_presence(img, ["pink"])
    with pytest.raises(ValueError, match="min_fraction must lie in"):
        colour_presence(img, ["red"], min_fraction=2.0)


# ---------------------------------------------------------------------------------- baselines
def test_depth_and_normals_baselines(examples):
    depths = np.stack([e["depth"] for e in examples])
    base = mean_depth_baseline(depths)
    assert base.shape == (RES, RES) and base.dtype == np.float32
    for y, x in [(0, 0), (RES - 1, RES // 2), (RES // 2, 3)]:
        hit = depths[:, y, x][depths[:, y, x] > 0]
        ref = hit.mean(dtype=np.float64) if len(hit) else depths[depths > 0].mean(dtype=np.float64)
        assert base[y, x] == pytest.approx(ref, rel=1e-5)
    score = depth_errors(np.broadcast_to(base, depths.shape), depths)
    assert 0 < score["abs_rel"] < 1
    normals = np.stack([e["normals"] for e in examples])
    nb = mean_normals_baseline(normals)
    assert nb.shape == (RES, RES, 3)
    np.testing.assert_allclose(np.linalg.norm(nb, axis=-1), 1.0, atol=1e-5)
    assert normals_angular_error(np.broadcast_to(nb, normals.shape), normals)["mean"] < 90
    with pytest.raises(ValueError, match="train_depths must be a non-empty stack"):
        mean_depth_baseline(depths[0])


def test_majority_class_baseline(examples):
    segs = np.stack([e["semseg"] for e in examples])
    base = majority_class_baseline(segs)
    for y, x in [(0, 0), (RES - 1, RES - 1), (RES // 2, RES // 2)]:
        counts = [np.sum(segs[:, y, x] == c) for c in range(len(SEMSEG_CLASSES))]
        assert base[y, x] == int(np.argmax(counts))
    flat = majority_class_baseline(segs, per_pixel=False)
    assert np.all(flat == np.argmax(np.bincount(segs.ravel())))
    assert semseg_miou(np.broadcast_to(base, segs.shape), segs)["miou"] < 1
    with pytest.raises(ValueError, match=r"train_semsegs class ids must lie in \[0, 3\)"):
        majority_class_baseline(segs, num_classes=3)


def test_caption_and_image_baselines(examples):
    train = [visible_objects(scenes.generate(i, "train", 32)) for i in range(40)]
    text = frequent_objects_caption_baseline(train)
    k = round(np.mean([len(s) for s in train]))
    picked = caption_objects(text)
    assert len(picked) == k
    counts = {p: sum(p in s for s in train) for p in picked}
    rest = [sum(p in s for s in train) for p in itertools.product(COLOR_NAMES, SHAPE_NAMES)]
    assert min(counts.values()) >= sorted(rest)[-k]
    recall = np.mean(
        [caption_recall_precision(text, visible_objects(e))["pair_recall"] for e in examples]
    )
    assert recall < 0.5
    hand = [{("red", "cube"), ("blue", "sphere")}, {("red", "cube")}, {("gray", "cylinder")}]
    # red cube twice; blue sphere and gray cylinder once each: the tie goes to gray (colour 0).
    assert caption_objects(frequent_objects_caption_baseline(hand, k=2)) == {
        ("red", "cube"),
        ("gray", "cylinder"),
    }
    assert objects_caption([]) == "An empty floor with no objects."
    assert caption_objects(objects_caption([("cyan", "cylinder")])) == {("cyan", "cylinder")}
    mean_rgb = mean_image_baseline(np.stack([e["rgb"] for e in examples]))
    assert mean_rgb.shape == (RES, RES, 3)
    with pytest.raises(ValueError, match="k must be an int >= 0"):
        frequent_objects_caption_baseline(hand, k=-1)


def test_mmjax_eval_reexports_the_scenes_metrics():
    import mmjax.eval
    import mmjax.eval.scenes as scene_metrics

    names = {
        "box_iou", "box_iou_match", "caption_objects", "caption_recall_precision",
        "colour_presence", "depth_errors", "frequent_objects_caption_baseline",
        "majority_class_baseline", "mean_depth_baseline", "mean_image_baseline",
        "mean_normals_baseline", "normals_angular_error", "objects_caption", "semseg_miou",
        "visible_objects",
    }  # fmt: skip
    assert names <= set(mmjax.eval.__all__) and names <= set(scene_metrics.__all__)
    for name in names:
        assert getattr(mmjax.eval, name) is getattr(scene_metrics, name)
    # The dense metrics are the generic ones, not copies.
    assert scene_metrics.depth_errors is mmjax.eval.dense_metrics.depth_errors
    assert scene_metrics.normals_angular_error is mmjax.eval.dense_metrics.normals_angular_error
