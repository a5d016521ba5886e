"""Records, sources and the Grain pipeline, on small synthetic sources (the scenes have
their own tests): determinism, host shards, checkpointable iterators, workers, aligned
augmentation, global batches, TFDS mock data, bad input."""

import os

import jax
import numpy as np
import pytest

from mmjax.data import (
    ArrayRecordSource,
    RandomCropFlip,
    build_dataset,
    build_source,
    crop_and_flip,
    make_iterator,
    write_records,
)
from mmjax.parallel import global_batch


class CountingSource:
    """Example i holds i in every field (picklable: worker processes can rebuild it)."""

    def __init__(self, n=40):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": np.full((3,), i, np.int32), "caption": f"scene {i}"}


def _ids(batches):
    return [int(v) for b in batches for v in b["x"][:, 0]]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_pipeline_is_deterministic_and_reshuffles_each_epoch():
    ds = lambda seed: build_dataset(CountingSource(), batch_size=8, seed=seed, num_epochs=2)
    a, b = _ids(make_iterator(ds(3))), _ids(make_iterator(ds(3)))
    assert a == b and len(a) == 80
    assert sorted(a[:40]) == list(range(40)) and sorted(a[40:]) == list(range(40))
    assert a[:40] != a[40:]  # a new permutation per epoch
    assert a != _ids(make_iterator(ds(4)))
    batch = next(make_iterator(ds(3)))
    assert list(batch["caption"]) == [f"scene {i}" for i in batch["x"][:, 0]]


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_get_disjoint_shards_covering_the_data(hosts):
    shards = [
        _ids(
            make_iterator(
                build_dataset(
                    CountingSource(),
                    batch_size=1,
                    seed=0,
                    num_epochs=1,
                    host_index=h,
                    host_count=hosts,
                )
            )
        )
        for h in range(hosts)
    ]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(40))  # disjoint and complete


def test_iterator_state_round_trip_gives_the_same_next_batches():
    ds = build_dataset(CountingSource(), batch_size=4, seed=1)
    it = make_iterator(ds)
    _take(it, 7)
    state = it.get_state()
    expected = _ids(_take(it, 5))
    resumed = make_iterator(ds)
    resumed.set_state(state)
    assert _ids(_take(resumed, 5)) == expected


def test_worker_processes_deliver_the_same_stream():
    ds = build_dataset(CountingSource(), batch_size=4, seed=2, transform=None)
    serial = _ids(_take(make_iterator(ds), 6))
    it = make_iterator(ds, worker_count=2)
    assert _ids(_take(it, 6)) == serial
    state = it.get_state()
    nxt = _ids(_take(it, 2))
    resumed = make_iterator(ds, worker_count=2)
    resumed.set_state(state)
    assert _ids(_take(resumed, 2)) == nxt


def _aligned_example(size=16, seed=0):
    """A synthetic example whose modalities are functions of position, with two objects."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    instance = np.zeros((size, size), np.int32)
    instance[2:6, 3:9] = 1
    instance[9:14, 10:15] = 2
    instance[4, 8:12] = 2  # makes instance 2 non-rectangular
    normals = np.stack([np.sign(xx - 7.5), np.zeros_like(xx), np.ones_like(xx)], -1)
    return {
        "rgb": rng.random((size, size, 3)).astype(np.float32),
        "depth": (xx * 100 + yy).astype(np.float32),
        "normals": normals.astype(np.float32),
        "semseg": np.where(instance > 0, instance + 1, 1).astype(np.int32),
        "instance": instance,
        "boxes": np.array([[3, 2, 8, 5], [8, 4, 14, 13]] + [[-1] * 4] * 4, np.int32),
        "box_class": np.array([2, 3, 0, 0, 0, 0], np.int32),
        "box_color": np.array([5, 1, -1, -1, -1, -1], np.int32),
        "box_instance": np.array([1, 2, 0, 0, 0, 0], np.int32),
        "caption": "a red sphere left of a blue cube; the cube is right of the sphere",
    }


@pytest.mark.parametrize("flip", [False, True])
def test_crop_and_flip_keep_modalities_aligned(flip):
    ex = _aligned_example()
    out = crop_and_flip(ex, top=3, left=5, size=10, flip=flip)
    cols = np.arange(5, 15)[::-1] if flip else np.arange(5, 15)
    rows = np.arange(3, 13)
    # depth encodes the source pixel: every modality must come from the same one.
    np.testing.assert_array_equal(out["depth"], (cols[None, :] * 100 + rows[:, None]))
    for key in ("rgb", "semseg", "instance"):
        np.testing.assert_array_equal(out[key], ex[key][rows][:, cols])
    sign = -1 if flip else 1
    np.testing.assert_array_equal(out["normals"][..., 0], sign * ex["normals"][rows][:, cols, 0])
    # Boxes are the tight boxes of the visible instance pixels after the crop.
    for box, inst in zip(out["boxes"], out["box_instance"], strict=True):
        if inst == 0:
            assert (box == -1).all()
            continue
        ys, xs = np.nonzero(out["instance"] == inst)
        np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max(), ys.max()])
    assert list(out["box_instance"][:2]) == [1, 2] and list(out["box_class"][:2]) == [2, 3]
    if flip:
        assert out["caption"] == "a red sphere right of a blue cube; the cube is left of the sphere"
    else:
        assert out["caption"] == ex["caption"]


def test_crop_that_hides_an_object_drops_its_box():
    ex = _aligned_example()
    out = crop_and_flip(ex, top=8, left=8, size=8, flip=False)  # instance 1 is outside
    assert list(out["box_instance"]) == [2, 0, 0, 0, 0, 0]
    assert list(out["box_class"]) == [3, 0, 0, 0, 0, 0]
    assert (out["boxes"][1:] == -1).all()


def test_random_crop_flip_is_seeded_and_validates():
    ex = _aligned_example()
    aug = RandomCropFlip(crop_size=12, flip_prob=0.5)
    a = aug(ex, np.random.default_rng(5))
    b = aug(ex, np.random.default_rng(5))
    np.testing.assert_array_equal(a["depth"], b["depth"])
    assert a["rgb"].shape == (12, 12, 3)
    with pytest.raises(ValueError, match="crop_size 20 is larger"):
        RandomCropFlip(crop_size=20)(ex, np.random.default_rng(0))
    with pytest.raises(ValueError, match="flip_prob"):
        RandomCropFlip(flip_prob=2.0)


def test_array_record_round_trip_and_tokens_through_the_pipeline(tmp_path):
    # Pre-tokenized data: int32 token maps per modality, a first-class source.
    rng = np.random.default_rng(0)
    examples = [
        {
            "tok_rgb": rng.integers(0, 1024, (8, 8), dtype=np.int32),
            "tok_depth": rng.integers(0, 512, (8, 8), dtype=np.int32),
            "caption": f"scene {i}",
            "index": np.int64(i),
        }
        for i in range(25)
    ]
    paths = write_records(examples, str(tmp_path), "tokens", num_shards=3)
    source = ArrayRecordSource(paths, required_keys=("tok_rgb", "tok_depth"))
    assert len(source) == 25
    by_index = {int(source[i]["index"]): source[i] for i in range(25)}
    for i, ex in enumerate(examples):
        for key in ("tok_rgb", "tok_depth"):
            np.testing.assert_array_equal(by_index[i][key], ex[key])
            assert by_index[i][key].dtype == np.int32
        assert by_index[i]["caption"] == ex["caption"]
    cfg = {
        "source": "array_record",
        "paths": str(tmp_path / "tokens-*"),
        "required_keys": ["tok_rgb"],
    }
    batch = next(make_iterator(build_dataset(build_source(cfg), batch_size=5, seed=0)))
    assert batch["tok_rgb"].shape == (5, 8, 8) and batch["tok_rgb"].dtype == np.int32
    for row, i in zip(batch["tok_rgb"], batch["index"], strict=True):
        np.testing.assert_array_equal(row, examples[int(i)]["tok_rgb"])


def test_validation_parts_of_records_and_scenes(tmp_path):
    """build_source(config, "validation"): a hash hold-out of record indices disjoint from
    training, or the files at eval_path; scenes: their validation split."""
    from mmjax.data import ScenesSource, build_validation_source, scenes

    write_records([{"index": np.int64(i)} for i in range(60)], str(tmp_path), "train")
    write_records([{"index": np.int64(100 + i)} for i in range(4)], str(tmp_path), "val")
    cfg = {
        "source": "array_record",
        "paths": str(tmp_path / "train-*"),
        "validation_fraction": 0.25,
    }
    train, val = build_source(cfg), build_validation_source(cfg)
    ti = sorted(int(train[i]["index"]) for i in range(len(train)))
    vi = sorted(int(val[i]["index"]) for i in range(len(val)))
    assert set(ti).isdisjoint(vi) and sorted(ti + vi) == list(range(60)) and 5 <= len(vi) <= 25
    assert len(build_source(cfg, "all")) == 60
    explicit = dict(cfg, eval_path=str(tmp_path / "val-*"))
    assert len(build_source(explicit)) == 60  # nothing held out when validation is given
    v = build_validation_source(explicit)
    assert sorted(int(v[i]["index"]) for i in range(len(v))) == [100, 101, 102, 103]
    sv = build_validation_source({"source": "scenes", "resolution": 32, "num_examples": 5})
    assert isinstance(sv, ScenesSource) and sv.split == "validation"
    np.testing.assert_array_equal(sv[2]["rgb"], scenes.generate(2, "validation", 32)["rgb"])


def test_bad_records_are_named(tmp_path):
    paths = write_records([{"a": np.arange(3)}] * 4, str(tmp_path), "ok", num_shards=2)
    with pytest.raises(FileExistsError, match="ok-00000-of-00002"):
        write_records([{"a": np.arange(3)}], str(tmp_path), "ok", num_shards=2)
    with pytest.raises(
        KeyError, match=r"ok-0000.-of-00002\.array_record \(record \d\) has no 'rgb'"
    ):
        ArrayRecordSource(paths, required_keys=("rgb",))[0]
    with open(paths[1], "rb") as f:
        data = f.read()
    with open(paths[1], "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"ok-00001-of-00002\.array_record"):
        ArrayRecordSource(paths)
    with pytest.raises(FileNotFoundError, match=r"missing\.array_record"):
        ArrayRecordSource([str(tmp_path / "missing.array_record")])
    # A readable ArrayRecord file whose records are not mmjax records.
    from array_record.python.array_record_module import ArrayRecordWriter

    bad = str(tmp_path / "garbage.array_record")
    w = ArrayRecordWriter(bad, "group_size:1")
    w.write(b"not an npz archive")
    w.close()
    with pytest.raises(ValueError, match=r"garbage.array_record \(record 0\): corrupt"):
        ArrayRecordSource(bad)[0]
    with pytest.raises(ValueError, match=r"data\.source must be one of"):
        build_source({"source": "imagenet"})
    with pytest.raises(FileNotFoundError, match="nothing matches"):
        build_source({"source": "array_record", "paths": str(tmp_path / "nope-*")})


def test_tfds_mock_source_end_to_end():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        source = build_source(
            {
                "source": "tfds",
                "tfds_name": "mnist",
                "split": "train",
                "keys": {"rgb": "image", "label": "label"},
            }
        )
        assert len(source) == 12
        raw = tfds.data_source("mnist", split="train")
        it = make_iterator(build_dataset(source, batch_size=4, seed=0, num_epochs=1))
        batches = list(it)
    assert len(batches) == 3
    # "rgb" is always three channels: mnist's gray repeated
    assert batches[0]["rgb"].dtype == np.float32 and batches[0]["rgb"].shape == (4, 28, 28, 3)
    seen = np.concatenate([b["rgb"] for b in batches])
    expected = np.stack([np.asarray(raw[i]["image"]) / 255.0 for i in range(12)])
    expected = np.repeat(expected, 3, axis=-1)
    # Same examples (in shuffled order): match by content.
    key = lambda a: a.reshape(len(a), -1).sum(1).round(4).tolist()
    assert sorted(key(seen)) == sorted(key(expected.astype(np.float32)))


def test_global_batch_is_sharded_over_the_data_axes(mesh):
    host = {
        "x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3),
        "caption": np.array([f"c{i}" for i in range(16)]),
    }
    out = global_batch(host, mesh)
    assert out["x"].shape == (16, 3)
    assert out["x"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    np.testing.assert_array_equal(out["x"], host["x"])
    assert len({s.index[0].start for s in out["x"].addressable_shards}) == 8
    assert isinstance(out["caption"], np.ndarray)


def test_pipeline_from_config_splits_the_global_batch_over_hosts():
    from mmjax.data import pipeline_from_config

    cfg = {"source": "array_record", "batch_size": 6}
    with pytest.raises(ValueError, match=r"batch_size \(6\) must divide over 4 hosts"):
        pipeline_from_config(cfg, host_index=0, host_count=4)


def test_write_records_leaves_no_temporary_files(tmp_path):
    write_records([{"a": np.arange(2)}], str(tmp_path), "t")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_scenes_through_the_configured_pipeline_stay_consistent():
    from mmjax.data import pipeline_from_config

    cfg = {
        "source": "scenes",
        "split": "validation",
        "resolution": 64,
        "num_examples": 32,
        "batch_size": 8,
        "seed": 3,
        "crop_size": 48,
        "flip_prob": 0.5,
    }
    it = pipeline_from_config(cfg, host_index=1, host_count=2)  # 4 per host
    batch = next(it)
    assert batch["rgb"].shape == (4, 48, 48, 3) and batch["depth"].shape == (4, 48, 48)
    for b in range(4):
        inst = batch["instance"][b]
        for box, i in zip(batch["boxes"][b], batch["box_instance"][b], strict=True):
            if i == 0:
                continue
            ys, xs = np.nonzero(inst == i)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max(), ys.max()])
        # semseg and instance stay aligned through crop and flip
        assert np.all(batch["semseg"][b][inst > 0] >= 2)
        np.testing.assert_allclose(
            np.linalg.norm(batch["normals"][b][batch["depth"][b] > 0], axis=-1), 1.0, atol=1e-5
        )
    state = it.get_state()
    nxt = next(it)
    again = pipeline_from_config(cfg, host_index=1, host_count=2)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["rgb"], nxt["rgb"])


def test_scenes_cli_writes_shards_and_a_contact_sheet(tmp_path):
    from PIL import Image

    from mmjax.data.scenes import generate
    from mmjax.data.scenes.__main__ import main

    paths = main(
        ["--out", str(tmp_path), "--num", "5", "--split", "test", "--shards", "2", "--sheet", "3"]
    )
    source = ArrayRecordSource(paths)
    records = sorted((source[i] for i in range(len(source))), key=lambda r: r["caption"])
    scenes = sorted((generate(i, "test") for i in range(5)), key=lambda r: r["caption"])
    for rec, scene in zip(records, scenes, strict=True):
        assert set(rec) == set(scene)
        for key, value in scene.items():
            if isinstance(value, str):
                assert rec[key] == value
            else:
                np.testing.assert_array_equal(rec[key], value)
    sheet = Image.open(tmp_path / "scenes-test-64.png")
    assert sheet.size[0] > 6 * 64
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--num", "5", "--split", "test", "--shards", "2"])
    with pytest.raises(ValueError, match="resolution"):
        main(["--out", str(tmp_path / "x"), "--num", "1", "--resolution", "60"])
