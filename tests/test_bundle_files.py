"""Bundle directories (the Tokenizer and 4M bundles): round trip, atomic replacement, errors
that name the file."""

import json
import os

import jax
import numpy as np
import pytest

from mmjax.storage.bundle_files import load_bundle, save_bundle

WEIGHTS = {
    "dense": {
        "kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
        "bias": np.ones(3, np.float32),
    },
    "codebook": np.arange(4, dtype=np.int32),
}


def _save(path, meta=None, weights=WEIGHTS):
    meta = {"format": "test-v1", "grid": (8, 8), **(meta or {})}
    return save_bundle(str(path), meta, "meta.json", weights, "w.msgpack")


def _load(path):
    return load_bundle(str(path), "meta.json", "w.msgpack", "test-v1", "load_test", "bundle")


def test_round_trip_keeps_values_dtypes_and_meta(tmp_path):
    _save(tmp_path / "b")
    meta, weights = _load(tmp_path / "b")
    assert meta == {"format": "test-v1", "grid": [8, 8]}  # tuples become JSON lists
    flat, want = jax.tree.leaves_with_path(weights), jax.tree.leaves_with_path(WEIGHTS)
    assert [p for p, _ in flat] == [p for p, _ in want]
    for (_, got), (_, ref) in zip(flat, want, strict=True):
        assert isinstance(got, jax.Array) and got.dtype == ref.dtype
        np.testing.assert_array_equal(np.asarray(got), ref)


def test_a_workdir_holding_the_bundle_loads(tmp_path):
    _save(tmp_path / "run" / "bundle")
    meta, _ = _load(tmp_path / "run")
    assert meta["format"] == "test-v1"


def test_saving_again_replaces_the_directory_and_leaves_no_temporaries(tmp_path):
    _save(tmp_path / "b", {"version": 1})
    (tmp_path / "b" / "stray.txt").write_text("from the old bundle")
    os.makedirs(tmp_path / "b.tmp")  # a crashed earlier write
    _save(tmp_path / "b", {"version": 2}, {"x": np.zeros(2)})
    meta, weights = _load(tmp_path / "b")
    assert meta["version"] == 2 and set(weights) == {"x"}
    assert sorted(os.listdir(tmp_path)) == ["b"]
    assert sorted(os.listdir(tmp_path / "b")) == ["meta.json", "w.msgpack"]


def test_errors_name_the_file_and_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load_test: .*nothing.*meta\.json not found"):
        _load(tmp_path / "nothing")
    _save(tmp_path / "b")
    (tmp_path / "b" / "w.msgpack").write_bytes(b"\x00not msgpack")
    with pytest.raises(ValueError, match=r"load_test: .*b is unreadable"):
        _load(tmp_path / "b")
    _save(tmp_path / "c", {"format": "other-v9"})
    with pytest.raises(ValueError, match=r"format 'other-v9', expected 'test-v1'"):
        _load(tmp_path / "c")
    _save(tmp_path / "d")
    (tmp_path / "d" / "meta.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match=r"format 'list', expected 'test-v1'"):
        _load(tmp_path / "d")
