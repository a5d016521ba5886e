"""Dense-map metrics (mmjax.eval.dense_metrics: depth errors, normals angular error, mIoU)
against brute-force references, hand-computed cases and the scenes' exact ground truth, and the
one definition that reconstruction_metrics and the scenes metrics share."""

import numpy as np
import pytest

from mmjax.data import scenes
from mmjax.data.scenes.constants import SEMSEG_CLASSES
from mmjax.eval import dense_metrics, reconstruction_metrics
from mmjax.eval.dense_metrics import depth_errors, normals_angular_error
from mmjax.eval.scenes import semseg_miou  # the scenes' default of 5 classes

RES = 64


@pytest.fixture(scope="module")
def examples():
    return [scenes.generate(i, "validation", RES) for i in range(4)]


# ---------------------------------------------------------------------------------- depth
def test_depth_errors_exact_and_shifted(examples):
    true = examples[0]["depth"]
    valid = true > 0
    assert 0 < valid.mean() < 1  # the scenes put 0 on the sky
    out = depth_errors(true, true)
    assert out["abs_rel"] == out["rmse"] == out["mae"] == 0.0
    assert out["delta1"] == 1.0 and out["num_valid"] == valid.sum()
    # +0.5 on hit pixels; anything on the sky is ignored.
    pred = np.where(valid, true + 0.5, 123.0)
    out = depth_errors(pred, true)
    assert out["mae"] == pytest.approx(0.5) and out["rmse"] == pytest.approx(0.5)
    ref = np.mean([0.5 / t for t in true[valid].astype(np.float64)])
    assert out["abs_rel"] == pytest.approx(ref, rel=1e-6)  # pred is float32
    # Predicting "sky" (0) everywhere: abs_rel 1, mae = mean depth, delta1 0.
    out = depth_errors(np.zeros_like(true), true)
    assert out["abs_rel"] == pytest.approx(1.0) and out["delta1"] == 0.0
    assert out["mae"] == pytest.approx(true[valid].mean(dtype=np.float64), rel=1e-6)


def test_depth_errors_matches_loop_with_mask():
    rng = np.random.default_rng(0)
    true = rng.uniform(6, 16, (2, 9, 7)) * (rng.random((2, 9, 7)) > 0.3)
    pred = np.abs(true + rng.normal(0, 2, true.shape))
    valid = (true > 0) & (rng.random(true.shape) > 0.2)
    out = depth_errors(pred, true, valid)
    ae, se, rel, d1 = [], [], [], []
    for idx in zip(*np.nonzero(valid), strict=True):
        p, t = pred[idx], true[idx]
        ae.append(abs(p - t))
        se.append((p - t) ** 2)
        rel.append(abs(p - t) / t)
        d1.append(p > 0 and max(p / t, t / p) < 1.25)
    assert out["mae"] == pytest.approx(np.mean(ae))
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean(se)))
    assert out["abs_rel"] == pytest.approx(np.mean(rel))
    assert out["delta1"] == pytest.approx(np.mean(d1))
    assert out["num_valid"] == len(ae)


@pytest.mark.parametrize(
    "pred, true, valid, match",
    [
        (np.ones((4, 4)), np.ones((4, 5)), None, "pred must have the shape"),
        (-np.ones((4, 4)), np.ones((4, 4)), None, "pred must be depths >= 0"),
        (np.ones((4, 4)), np.full((4, 4), np.nan), None, "true must be finite"),
        (np.ones((4, 4)), np.ones((4, 4)), np.ones((4, 4)), "valid must be a boolean mask"),
        (np.ones((4, 4)), np.eye(4), np.ones((4, 4), bool), "valid selects pixels outside"),
        (np.ones((4, 4)), np.zeros((4, 4)), None, "valid selects no pixels"),
        (np.ones(4), np.ones(4), None, "true must be a depth map"),
    ],
)
def test_depth_errors_bad_input(pred, true, valid, match):
    with pytest.raises(ValueError, match=match):
        depth_errors(pred, true, valid)


# ---------------------------------------------------------------------------------- normals
def rotate_about_perpendicular(n, degrees, rng):
    """Rotate each unit vector n [N, 3] by ``degrees`` about a random axis perpendicular to it."""
    axis = np.cross(n, rng.normal(size=n.shape))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    th = np.radians(degrees)[..., None] if np.ndim(degrees) else np.radians(degrees)
    # Rodrigues with axis . n = 0.
    return n * np.cos(th) + np.cross(axis, n) * np.sin(th)


def test_normals_angular_error_known_rotations(examples):
    rng = np.random.default_rng(1)
    true = examples[1]["normals"].astype(np.float64)
    valid = np.linalg.norm(true, axis=-1) > 0.5
    out = normals_angular_error(true, true)
    assert out["mean"] == pytest.approx(0.0, abs=1e-5) and out["within_11.25"] == 1.0
    n = true[valid]
    pred = np.zeros_like(true)
    pred[valid] = rotate_about_perpendicular(n, 17.0, rng)
    out = normals_angular_error(pred, true)
    assert out["mean"] == pytest.approx(17.0, abs=1e-4)
    assert out["median"] == pytest.approx(17.0, abs=1e-4)
    assert (out["within_11.25"], out["within_22.5"], out["within_30"]) == (0.0, 1.0, 1.0)
    # Four groups of angles, and a scaled (non-unit) prediction: normalization is internal.
    angles = np.array([5.0, 20.0, 28.0, 100.0])[np.arange(len(n)) % 4]
    pred[valid] = 0.5 * rotate_about_perpendicular(n, angles, rng)
    out = normals_angular_error(pred, true)
    assert out["mean"] == pytest.approx(angles.mean(), abs=1e-4)
    assert out["median"] == pytest.approx(np.median(angles), abs=1e-4)
    for th in (11.25, 22.5, 30.0):
        assert out[f"within_{th:g}"] == pytest.approx(np.mean(angles <= th))
    # A zero prediction on a valid pixel counts as 90 degrees; a mask restricts the pixels.
    out = normals_angular_error(np.zeros_like(true), true)
    assert out["mean"] == pytest.approx(90.0) and out["num_valid"] == valid.sum()
    half = valid & (np.arange(RES)[None, :] < RES // 2)
    assert normals_angular_error(pred, true, half)["num_valid"] == half.sum()


def test_normals_angular_error_bad_input(examples):
    true = examples[0]["normals"]
    with pytest.raises(ValueError, match="pred must have the shape"):
        normals_angular_error(true[..., :2], true)
    with pytest.raises(ValueError, match="true must hold unit vectors"):
        normals_angular_error(true, (true + 1) / 2)  # the (n + 1) / 2 image encoding
    with pytest.raises(ValueError, match=r"pred components must lie in \[-1, 1\]"):
        normals_angular_error(true * 255, true)
    with pytest.raises(ValueError, match="valid selects pixels outside"):
        normals_angular_error(true, true, np.ones(true.shape[:-1], bool))
    with pytest.raises(ValueError, match="true must be normals"):
        normals_angular_error(true[..., :2], true[..., :2])


# ---------------------------------------------------------------------------------- semseg
def test_semseg_miou_hand_case():
    true = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    # class 0: inter 1, union 3; class 1: inter 2, union 3; class 2: inter 1, union 2;
    # classes 3, 4 absent from both: left out.
    out = semseg_miou(pred, true)
    assert out["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert out["pixel_accuracy"] == pytest.approx(4 / 6)
    assert out["num_classes_counted"] == 3
    assert np.isnan(out["per_class_iou"][3:]).all()
    assert semseg_miou(true, true)["miou"] == 1.0


def test_semseg_miou_matches_loop(examples):
    rng = np.random.default_rng(2)
    true = np.stack([e["semseg"] for e in examples[:4]])
    pred = np.where(rng.random(true.shape) < 0.3, rng.integers(0, 5, true.shape), true)
    out = semseg_miou(pred, true, len(SEMSEG_CLASSES))
    ious = []
    for c in range(len(SEMSEG_CLASSES)):
        union = np.sum((pred == c) | (true == c))
        if union:
            ious.append(np.sum((pred == c) & (true == c)) / union)
    assert out["miou"] == pytest.approx(np.mean(ious))
    assert out["pixel_accuracy"] == pytest.approx(np.mean(pred == true))


def test_semseg_miou_bad_input():
    t = np.zeros((3, 3), np.int32)
    with pytest.raises(ValueError, match="pred must hold integer class ids"):
        semseg_miou(t.astype(np.float32), t)
    with pytest.raises(ValueError, match=r"true class ids must lie in \[0, 5\)"):
        semseg_miou(t, t + 5)
    with pytest.raises(ValueError, match="pred must have the shape"):
        semseg_miou(t[:2], t)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        semseg_miou(t, t, 0)


# ---------------------------------------------------------------------------------- one definition
def confusion_matrix_miou(pred, true, num_classes):
    """Reference mIoU: a confusion matrix filled by np.add.at, IoU = TP / (TP + FP + FN), averaged
    over the classes with TP + FP + FN > 0."""
    cm = np.zeros((num_classes, num_classes), np.int64)  # [true, pred]
    np.add.at(cm, (np.ravel(true), np.ravel(pred)), 1)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = tp + fp + fn
    return float(np.mean(tp[denom > 0] / denom[denom > 0])), denom > 0


@pytest.mark.parametrize("seed", range(6))
def test_semseg_miou_matches_confusion_matrix(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 12))
    shape = tuple(int(n) for n in rng.integers(1, 12, size=int(rng.integers(1, 4))))
    # The target uses a subset of the classes; the prediction may name any class.
    subset = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)
    true = rng.choice(subset, size=shape)
    pred = np.where(rng.random(shape) < 0.5, true, rng.integers(0, k, shape))
    ref, counted = confusion_matrix_miou(pred, true, k)
    out = dense_metrics.semseg_miou(pred, true, k)
    assert out["miou"] == pytest.approx(ref, rel=1e-12)
    assert out["num_classes_counted"] == counted.sum()
    np.testing.assert_array_equal(np.isnan(out["per_class_iou"]), ~counted)
    if k <= len(SEMSEG_CLASSES):
        assert semseg_miou(pred, true)["miou"] == out["miou"]
    assert reconstruction_metrics("semseg", true, pred)["miou"] == pytest.approx(ref, rel=1e-12)


def test_reconstruction_semseg_counts_predicted_classes_absent_from_target():
    true = np.array([[0, 0], [1, 1]], np.int32)
    pred = np.array([[0, 2], [1, 1]], np.int32)
    # class 0: 1 / 2, class 1: 2 / 2, class 2 (predicted, absent from the target): 0 / 1.
    out = reconstruction_metrics("semseg", true, pred)
    assert out["miou"] == pytest.approx(0.5)
    assert out["pixel_acc"] == pytest.approx(0.75)


def test_reconstruction_metrics_equal_scenes_metrics(examples):
    rng = np.random.default_rng(6)
    # semseg: scene labels with 20% of the pixels relabelled at random.
    true = np.stack([e["semseg"] for e in examples[:2]]).astype(np.int32)
    pred = np.where(rng.random(true.shape) < 0.2, rng.integers(0, 5, true.shape), true)
    pred = pred.astype(np.int32)
    rec = reconstruction_metrics("semseg", true, pred)
    ref = semseg_miou(pred, true)
    assert rec["miou"] == ref["miou"] and rec["pixel_acc"] == ref["pixel_accuracy"]
    # normals: rotated by several angles, scaled, and zero (90 degrees) on some hit pixels.
    true = np.stack([e["normals"] for e in examples[:2]]).astype(np.float64)
    valid = np.linalg.norm(true, axis=-1) > 0.5
    n = true[valid]
    pred = np.zeros_like(true)
    angles = np.array([3.0, 40.0, 120.0, 179.0])[np.arange(len(n)) % 4]
    pred[valid] = 0.7 * rotate_about_perpendicular(n, angles, rng)
    pred[valid & (rng.random(valid.shape) < 0.1)] = 0.0
    rec = reconstruction_metrics("normals", true, pred)
    assert rec["angle_deg"] == normals_angular_error(pred, true)["mean"]
    # depth: mean absolute error on hit pixels.
    true = np.stack([e["depth"] for e in examples[:2]])
    pred = np.abs(true + rng.normal(0, 1, true.shape)).astype(np.float32)
    rec = reconstruction_metrics("depth", true, pred)
    assert rec["abs_err"] == depth_errors(pred, true)["mae"]
    # No hit pixel at all: 0, as before.
    assert reconstruction_metrics("normals", np.zeros((2, 3, 3)), np.zeros((2, 3, 3))) == {
        "angle_deg": 0.0
    }
    assert reconstruction_metrics("depth", np.zeros((2, 3)), np.ones((2, 3)))["abs_err"] == 0.0
