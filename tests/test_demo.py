"""The demo end to end (the plumbing; the default mode's numbers are in the README), under a
tiny plan and as `python -m mmjax.demo --quick`, both in the slow step (minutes each): every
stage runs, the grids and metrics.json are written, metrics are finite and scored against
baselines computed by the same functions, and a re-run skips every stage."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmjax.configs import load
from mmjax.data.scenes.constants import IMAGE_MODALITIES
from mmjax.demo.run import main
from mmjax.demo.stages import (
    PLANS,
    fourm_stage_config,
    load_plan,
    pretokenize_scenes,
    save_plan,
    seeded,
    tokenizer_stage_config,
    train_fourm_model,
    train_tokenizers,
)


@pytest.fixture(params=[pytest.param(m, marks=pytest.mark.slow) for m in ("tiny", "quick")])
def demo(request):
    """(mode, workdir, results, plan) of a finished demo: conftest's tiny plan, or the
    README's `python -m mmjax.demo --quick` (slow)."""
    return request.param, *request.getfixturevalue(f"{request.param}_demo")


def test_demo_runs_end_to_end_and_resumes(demo):
    mode, workdir, results, plan = demo
    tmp_path = Path(workdir)
    out = tmp_path / "results"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mode"] == mode and saved["rgb_to_all"] == json.loads(
        json.dumps(results["rgb_to_all"])
    )
    n = min(plan.eval_scenes, 8)
    r = plan.resolution
    grids = (("rgb_to_all", 9), ("caption_to_rgb", 4), ("complete_image", 3), ("tokenizers", 8))
    for name, cols in grids:
        w, h = Image.open(out / f"{name}.png").size
        assert h >= n * r * 3 and w >= cols * r * 3, (name, w, h)
    rgb = saved["rgb_to_all"]
    for m, key in (("depth", "abs_rel"), ("normals", "mean"), ("semseg", "miou")):
        for kind in ("generated", "baseline", "tokenizer_ceiling"):
            assert math.isfinite(rgb[m][kind][key]), (m, kind)
    assert 0 <= rgb["semseg"]["generated"]["miou"] <= 1
    assert 0 <= rgb["caption"]["generated"]["pair_recall"] <= 1
    assert 0 <= saved["caption_to_rgb"]["colour_presence"] <= 1
    for key in ("objects_caption", "objects_another_caption", "all_caption"):
        assert -20 < saved["caption_to_rgb"][f"rgb_logp_{key}"] < 0, key
    assert np.isfinite(saved["complete_image"]["psnr_right_half"])
    direct = saved["caption_to_rgb_direct"]
    assert direct["rgb_tokens"] == "2d" and set(direct) >= {"maskgit", "tokenizer_ceiling"}
    assert 0 <= direct["maskgit"]["colour_presence"] <= 1
    # a re-run finds every stage's output instead of training again
    logs = []
    toks = train_tokenizers(str(tmp_path), plan, logs.append)
    data = pretokenize_scenes(str(tmp_path), plan, toks, logs.append)
    train_fourm_model(str(tmp_path), plan, data, logs.append)
    assert len(logs) == 4 + 2 + 1 and all(": found " in line for line in logs), logs
    assert load_plan(workdir) == plan
    with pytest.raises(ValueError, match=rf"mode '{mode}' with another plan.*new --workdir"):
        main(["--workdir", workdir])  # the default plan over this workdir


def test_each_mode_has_its_own_default_workdir(monkeypatch):
    """`--quick` then the full demo: two workdirs, so the second is not refused."""
    from mmjax.demo import run

    calls = []
    monkeypatch.setattr(run, "run_demo", lambda *args, **kw: calls.append((*args, kw)))
    main(["--quick"])
    main([])
    main(["--quick", "--workdir", "/tmp/elsewhere", "--seed", "3"])
    main(["--seed", "2"])
    main(["--quick", "--rgb_tokens=1d"])
    main(["--rgb-tokens", "1d", "--seed", "1"])
    two, one = {"rgb_tokens": "2d"}, {"rgb_tokens": "1d"}
    assert calls == [
        ("workdirs/demo_quick", "quick", 0, two),
        ("workdirs/demo", "default", 0, two),
        ("/tmp/elsewhere", "quick", 3, two),
        ("workdirs/demo_seed2", "default", 2, two),
        ("workdirs/demo_quick_1d", "quick", 0, one),
        ("workdirs/demo_1d_seed1", "default", 1, one),
    ]


def test_a_seed_reaches_every_training_stage_and_its_workdir_refuses_another(tmp_path):
    """--seed N sets `seed` and `data.seed` of every stage's config (what the printed commands
    pass as --config.seed=N); seed 0 leaves the plan as it is, and a workdir keeps its seed."""
    assert seeded(PLANS["default"], 0) is PLANS["default"]
    plan = seeded(PLANS["default"], 7)
    data = {"train": "/w/data/train", "validation": "/w/data/validation"}
    for c in [tokenizer_stage_config(plan, m) for m in IMAGE_MODALITIES] + [
        fourm_stage_config(plan, data)
    ]:
        assert (c.seed, c.data.seed) == (7, 7)
    base = tokenizer_stage_config(PLANS["default"], "rgb")
    assert (base.seed, base.data.seed) == (0, 0)
    save_plan(str(tmp_path), "default", plan)
    with pytest.raises(ValueError, match="another plan"):
        save_plan(str(tmp_path), "default", seeded(PLANS["default"], 8))


def test_a_workdir_of_another_mode_is_refused_before_any_training(tmp_path):
    save_plan(str(tmp_path), "quick", PLANS["quick"])
    with pytest.raises(ValueError, match=r"mode 'quick' with another plan.*new --workdir"):
        main(["--workdir", str(tmp_path)])
    (tmp_path / "plan.json").write_text(json.dumps({"mode": "default", "tokenizer_steps": {}}))
    with pytest.raises(ValueError, match="not a demo plan of this mmjax version"):
        load_plan(str(tmp_path))


def test_the_stages_train_the_demo_configs():
    """The stages run configs/demo_*.py (what `python -m mmjax.train` runs) with only the
    workdir's data paths and the plan's overrides set."""
    plan = PLANS["default"]
    for m in IMAGE_MODALITIES:
        assert (
            tokenizer_stage_config(plan, m).to_dict()
            == load("demo_tokenizer", f"modality={m}").to_dict()
        )
    data = {"train": "/w/data/train", "validation": "/w/data/validation"}
    c = fourm_stage_config(plan, data)
    want = load("demo_fourm")
    want.data.path, want.data.val_path = data["train"], data["validation"]
    assert c.to_dict() == want.to_dict()
    small = dataclasses.replace(
        PLANS["quick"], tokenizer_overrides={"total_steps": 10}, fourm_overrides={"total_steps": 8}
    )
    c = tokenizer_stage_config(small, "rgb")
    assert (c.total_steps, c.log_every, c.eval.every, c.optimizer.warmup_steps) == (10, 1, 5, 1)
    assert fourm_stage_config(small, data).eval.every == 2
    with pytest.raises(KeyError, match="no such field"):
        tokenizer_stage_config(dataclasses.replace(small, tokenizer_overrides={"steps": 3}), "rgb")
    with pytest.raises(ValueError, match="resolution"):
        tokenizer_stage_config(dataclasses.replace(small, resolution=64), "rgb")


def test_load_plan_names_a_missing_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"plan\.json not found.*mmjax\.demo"):
        load_plan(str(tmp_path))


def test_malformed_generated_boxes_are_dropped_not_scored(monkeypatch):
    from mmjax.demo import tasks

    boxes = np.array([[1, 2, 5, 6], [7, 2, 3, 6], [0, 9, 4, 1], [3, 3, 3, 3]], np.int32)
    parsed = (boxes, np.arange(4, dtype=np.int32), np.arange(10, 14, dtype=np.int32))
    monkeypatch.setattr(tasks, "scenes_boxes", lambda tok, ids, r: parsed)
    kept, classes, colours = tasks._boxes(None, np.array([5, 6, 0]), 32)
    np.testing.assert_array_equal(kept, boxes[[0, 3]])  # x_min > x_max and y_min > y_max go
    np.testing.assert_array_equal(classes, [0, 3])
    np.testing.assert_array_equal(colours, [10, 13])

    def malformed(tok, ids, r):
        raise ValueError("not a box sequence")

    monkeypatch.setattr(tasks, "scenes_boxes", malformed)
    kept, classes, colours = tasks._boxes(None, np.array([5]), 32)
    assert kept.shape == (0, 4) and classes.shape == colours.shape == (0,)


def test_drawn_boxes_outline_their_border_pixels_in_the_object_colour():
    from mmjax.data import scenes
    from mmjax.demo.tasks import draw_boxes

    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 3)).astype(np.float32)
    box, colour = np.array([2, 3, 9, 12]), 1  # inclusive pixel indices
    out = draw_boxes(image, np.stack([box, [-1, -1, -1, -1]]), [colour, 0])  # padding skipped
    x0, y0, x1, y1 = box
    border = np.zeros((16, 16), bool)
    border[y0 : y1 + 1, [x0, x1]] = border[[y0, y1], x0 : x1 + 1] = True
    want = np.round(np.asarray(scenes.COLOR_RGB[colour]) * 255) / 255
    np.testing.assert_allclose(out[border], np.broadcast_to(want, out[border].shape), atol=1 / 255)
    gray = image.mean(-1) * 0.5 + 0.1  # everything else: the image dimmed to gray
    np.testing.assert_allclose(out[~border], np.repeat(gray[~border][:, None], 3, 1), atol=1 / 255)


def test_the_1d_rgb_tokenizer_stage_is_configs_tokenizer_1d_at_the_demo_steps(tmp_path):
    """rgb_tokens="1d": rgb's stage trains configs/tokenizer_1d.py:trunk=mlp at 32 px (its model,
    quantizer and optimizer) on the 2D demo tokenizer's batches for its steps; the other
    modalities keep their 2D tokenizers; a plan.json from before the field reads as 2d."""
    plan = dataclasses.replace(PLANS["default"], rgb_tokens="1d")
    c = tokenizer_stage_config(plan, "rgb")
    one_d = load("tokenizer_1d", "quantizer=fsq,resolution=32,trunk=mlp")
    two_d = load("demo_tokenizer", "modality=rgb")
    assert c.model.to_dict() == one_d.model.to_dict() and c.model.type == "flex1d"
    assert c.model.trunk == "mlp"
    assert c.quantizer.to_dict() == one_d.quantizer.to_dict()
    assert c.optimizer.learning_rate == one_d.optimizer.learning_rate
    assert (c.total_steps, c.data.batch_size, c.data.resolution) == (
        two_d.total_steps, two_d.data.batch_size, 32,
    )  # fmt: skip
    assert (
        tokenizer_stage_config(plan, "depth").to_dict()
        == load("demo_tokenizer", "modality=depth").to_dict()
    )
    with pytest.raises(ValueError, match="tokens=1d is an rgb tokenizer"):
        load("demo_tokenizer", "modality=depth,tokens=1d")
    with pytest.raises(ValueError, match="rgb_tokens must be one of"):
        dataclasses.replace(plan, rgb_tokens="3d")
    record = {"mode": "default", **dataclasses.asdict(PLANS["default"])}
    record.pop("rgb_tokens")
    (tmp_path / "plan.json").write_text(json.dumps(record))
    save_plan(str(tmp_path), "default", PLANS["default"])  # the same plan: accepted
    assert load_plan(str(tmp_path)) == PLANS["default"]
    with pytest.raises(ValueError, match="another plan"):
        save_plan(str(tmp_path), "default", plan)


@pytest.mark.slow
def test_quick_demo_with_1d_rgb_tokens_runs_every_task(tmp_path):
    """`python -m mmjax.demo --quick --rgb_tokens=1d`: rgb is pre-tokenized as 1D tokens, the
    4M trains on them, and every task runs (caption -> rgb directly by MaskGIT and by AR,
    completion from the first half of the tokens); a re-run finds every stage."""
    workdir = str(tmp_path)
    results = main(["--quick", "--rgb_tokens=1d", "--workdir", workdir])
    plan = dataclasses.replace(PLANS["quick"], rgb_tokens="1d")
    assert load_plan(workdir) == plan and results["rgb_tokens"] == "1d"
    manifest = json.loads((tmp_path / "data" / "train" / "manifest.json").read_text())
    assert manifest["modalities"]["tok_rgb"]["kind"] == "image_tokens_1d"
    assert manifest["modalities"]["tok_depth"]["kind"] == "image_tokens"
    k = manifest["modalities"]["tok_rgb"]["num_tokens"]
    out = tmp_path / "results"
    saved = json.loads((out / "metrics.json").read_text())
    direct = saved["caption_to_rgb_direct"]
    for scheme in ("maskgit", "ar"):
        for key in ("colour_presence", "other_scenes_colours"):
            assert 0 <= direct[scheme][key] <= 1, (scheme, key)
    c = saved["caption_to_rgb"]
    assert 0 <= c["colour_presence"] <= 1 and -20 < c["rgb_logp_all_caption"] < 0
    e = saved["complete_image"]
    assert e["known_tokens"] == k // 2
    assert all(np.isfinite(e[key]) for key in ("psnr_completed", "prefix_only"))
    n, r = min(plan.eval_scenes, 8), plan.resolution
    for name, cols in (("caption_to_rgb_direct", 3), ("complete_image", 3), ("rgb_to_all", 9)):
        w, h = Image.open(out / f"{name}.png").size
        assert h >= n * r * 3 and w >= cols * r * 3, (name, w, h)
    logs = []
    toks = train_tokenizers(workdir, plan, logs.append)
    data = pretokenize_scenes(workdir, plan, toks, logs.append)
    train_fourm_model(workdir, plan, data, logs.append)
    assert len(logs) == 4 + 2 + 1 and all(": found " in line for line in logs), logs
