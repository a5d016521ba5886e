"""Bundles that are not what they say: bit rot in the weight files (checksums recorded on save,
checked on load), metadata that disagrees with the weights or names an unknown modality, and
an export killed midway (the previous bundle still loads and gives the same outputs)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.storage import checksums
from mmjax.storage.bundles import BundleError, load_bundle, save_bundle
from mmjax.tokenizers import Tokenizer, build_autoencoder

ROOT = Path(__file__).resolve().parents[1]
META = "tokenizer.json"  # the name tests/kill_driver.py's export_meta hook watches
RNG = np.random.default_rng(0)
WEIGHTS = {
    "big": RNG.standard_normal((256, 64)).astype(np.float32),  # 64 KiB: a data file of its own
    "small": {"b": np.arange(5, dtype=np.int32), "h": np.ones(4, ml_dtypes.bfloat16)},
}
TOK_MODEL = dict(
    type="vit", size="tiny", patch_size=8, width=32, depth=1, heads=2, mlp_dim=64, z_dim=8
)
TOK_QUANTIZER = {"type": "fsq", "levels": [4, 4, 4]}


def _save(path, weights=WEIGHTS, **meta):
    return save_bundle(path, {"format": "test-v1", **meta}, META, weights)


def _load(path, **kwargs):
    return load_bundle(path, META, "test-v1", "load_test", "bundle", **kwargs)


def _edit_meta(path, **fields):
    meta = json.loads((Path(path) / META).read_text())
    meta.update(fields)
    for k in [k for k, v in fields.items() if v is None]:
        del meta[k]
    (Path(path) / META).write_text(json.dumps(meta))


# -- the checksum ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "bool", "uint16", "int32"])
def test_checksum_is_the_same_on_the_host_and_over_any_sharding(mesh, dtype):
    x = np.asarray(RNG.standard_normal((16, 24)) * 50).astype(dtype)
    host = checksums.digest(x)
    assert len(host) == 16
    [device] = checksums._device_lanes_many([jnp.asarray(x)])  # the jitted path, one device
    assert "".join(f"{int(v):08x}" for v in np.asarray(device)) == host
    specs = (P("data", "fsdp"), P(None, ("data", "fsdp")), P("fsdp"))
    sharded = [jax.device_put(x, NamedSharding(mesh, spec)) for spec in specs]
    for lanes in checksums._device_lanes_many(sharded):  # the path of accelerators and pods
        assert "".join(f"{int(v):08x}" for v in np.asarray(lanes)) == host


def test_checksum_sees_a_flipped_bit_and_swapped_or_moved_values():
    x = RNG.standard_normal(1000).astype(np.float32)
    base = checksums.digest(x)
    flipped = x.copy()
    flipped.view(np.uint32)[123] ^= 1 << 7
    swapped = x.copy()
    swapped[[10, 20]] = swapped[[20, 10]]
    digests = {
        checksums.digest(flipped),
        checksums.digest(swapped),
        checksums.digest(np.roll(x, 1)),
        checksums.digest(x.reshape(10, 100)[:, ::-1].copy()),
        checksums.digest(np.zeros(1000, np.float32)),
        checksums.digest(np.zeros(1001, np.float32)),
    }
    assert base not in digests and len(digests) == 6
    # A float64 array is held (and read back) as float32 while 64-bit types are off.
    assert checksums.digest(x.astype(np.float64)) == base


# -- bit rot ---------------------------------------------------------------------------------


def _data_files(bundle) -> list[Path]:
    """The OCDBT data files of a bundle's weights, largest first."""
    files = [p for p in (Path(bundle) / "weights-0").rglob("*") if p.parent.name == "d"]
    return sorted(files, key=lambda p: -p.stat().st_size)


def test_bit_rot_in_the_weight_files_is_an_error_naming_the_bundle(tmp_path):
    good = tmp_path / "good"
    _save(good)
    assert set(json.loads((good / META).read_text())["checksums"]["arrays"]) == {
        "big",
        "small/b",
        "small/h",
    }
    big = _data_files(good)[0]
    assert big.stat().st_size >= 256 * 64 * 3  # the file that holds "big" (zstd: a little less)
    rng = np.random.default_rng(1)
    for i, where in enumerate((0.5, 0.25, 0.9)):
        bad = tmp_path / f"bad{i}"
        shutil.copytree(good, bad)
        target = bad / big.relative_to(good)
        data = bytearray(target.read_bytes())
        at = int(len(data) * where)
        data[at : at + 256] = rng.bytes(256)
        target.write_bytes(bytes(data))
        with pytest.raises(BundleError, match=rf"load_test: {bad}/weights-0 is corrupt: .*\bbig "):
            _load(bad)
    # Without the checksums (a bundle of an older mmjax) the same rot reads as other values.
    _edit_meta(bad, checksums=None)
    assert not np.array_equal(np.asarray(_load(bad)[1]["big"]), WEIGHTS["big"])
    # Bytes of the files TensorStore reads to find the arrays: its own error, under ours.
    for i, victim in enumerate(_data_files(good)[1:]):
        bad = tmp_path / f"index{i}"
        shutil.copytree(good, bad)
        target = bad / victim.relative_to(good)
        target.write_bytes(bytes(b ^ 0xFF for b in target.read_bytes()))
        try:
            _, weights = _load(bad)
        except BundleError as e:
            assert f"{bad}/weights-0" in str(e)
        else:  # a file no array needed: what was read is what was saved
            assert all(
                np.array_equal(np.asarray(a), b)
                for a, b in zip(jax.tree.leaves(weights), jax.tree.leaves(WEIGHTS), strict=True)
            )


def test_checksums_in_the_metadata_are_compared_and_old_bundles_load_unchecked(tmp_path):
    _save(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / META).read_text())
    sums = meta["checksums"]
    _edit_meta(
        tmp_path / "b", checksums={**sums, "arrays": {**sums["arrays"], "small/b": "0" * 16}}
    )
    with pytest.raises(BundleError, match=r"weights-0 is corrupt: .*small/b \(read [0-9a-f]{16}, "):
        _load(tmp_path / "b")
    lost = {**sums["arrays"], "gone": "0" * 16}
    _edit_meta(tmp_path / "b", checksums={**sums, "arrays": lost})
    with pytest.raises(BundleError, match=r"gone \(missing\)"):
        _load(tmp_path / "b")
    _edit_meta(tmp_path / "b", checksums=None)  # a bundle of an mmjax before checksums
    weights = _load(tmp_path / "b")[1]
    np.testing.assert_array_equal(np.asarray(weights["big"]), WEIGHTS["big"])


# -- metadata against the weights --------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_bundle(tmp_path_factory):
    """(bundle dir, images, tokens): an untrained 32 px rgb ViT tokenizer with FSQ 4x4x4."""
    model = build_autoencoder(TOK_MODEL, TOK_QUANTIZER, "rgb")
    x = np.zeros((1, 32, 32, 3), np.float32)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
    path = tmp_path_factory.mktemp("tokenizer") / "tok"
    Tokenizer.save(
        path, modality="rgb", model_config=TOK_MODEL, quantizer_config=TOK_QUANTIZER,
        resolution=32, variables=variables,
    )  # fmt: skip
    images = np.random.default_rng(2).random((4, 32, 32, 3)).astype(np.float32)
    return path, images, np.asarray(Tokenizer.load(path).encode(images))


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"modality": "lidar"}, r"field 'modality' is 'lidar', expected one of \('rgb', "),
        (  # the same arrays, another codebook: the recorded codebook size gives it away
            {"quantizer": {"type": "fsq", "levels": [8, 8, 8]}},
            r"field 'codebook_size' is 64, but the 'model', 'quantizer' and 'resolution' "
            r"fields give 512",
        ),
        (
            {"quantizer": {"type": "vq", "codebook_size": 64}, "codebook_size": 64},
            r"weights-0 lacks arrays the model has: quantizer_stats/quantizer/cluster_size.* "
            r"\(the metadata's 'quantizer' field describes another model\)",
        ),
        (
            {"model": {**TOK_MODEL, "width": 48}},
            r"weights-0 holds arrays of other shapes: .*\(the metadata's 'model' field "
            r"describes another model\)",
        ),
        ({"grid_shape": [8, 8]}, r"field 'grid_shape' is \[8, 8\], but .* give \[4, 4\]"),
        ({"resolution": None}, r"no 'resolution' field"),
    ],
)
def test_tokenizer_metadata_that_disagrees_with_its_weights_is_refused(
    tokenizer_bundle, tmp_path, fields, expected
):
    path, images, tokens = tokenizer_bundle
    bad = tmp_path / "tok"
    shutil.copytree(path, bad)
    _edit_meta(bad, **fields)
    with pytest.raises(BundleError, match=rf"Tokenizer\.load: {bad}/.*{expected}"):
        Tokenizer.load(bad)
    np.testing.assert_array_equal(np.asarray(Tokenizer.load(path).encode(images)), tokens)


def test_weights_the_model_lacks_are_refused(tmp_path):
    _save(tmp_path / "b")
    model = {"big": jax.ShapeDtypeStruct((256, 64), np.float32)}
    with pytest.raises(BundleError, match=r"weights-0 holds arrays the model lacks: small/b, "):
        _load(tmp_path / "b", abstract=lambda meta: model)


# -- an export killed midway -------------------------------------------------------------------


@pytest.mark.parametrize("moment", ["export_weights", "export_meta"])
def test_an_export_killed_midway_leaves_the_previous_bundle(tokenizer_bundle, tmp_path, moment):
    path, images, tokens = tokenizer_bundle
    bundle = tmp_path / "tokenizer"  # the folder name the export_meta hook watches
    shutil.copytree(path, bundle)
    before = sorted(os.listdir(bundle))
    script = (
        "import sys, numpy as np\n"
        "from tests import kill_driver\n"
        f"kill_driver.HOOKS[{moment!r}]()\n"
        "from mmjax.storage.bundles import save_bundle\n"
        f"save_bundle({str(bundle)!r}, {{'format': 'x'}}, {META!r}, {{'w': np.zeros(3)}})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "kill_driver: SIGKILL" in proc.stdout
    assert (bundle / "weights-1").is_dir()  # the new weights were written, never named
    assert json.loads((bundle / META).read_text())["weights"] == "weights-0"
    got = Tokenizer.load(bundle).encode(images)
    np.testing.assert_array_equal(np.asarray(got), tokens)
    leftovers = set(os.listdir(bundle)) - set(before)
    assert leftovers <= {"weights-1", *(f for f in leftovers if f.startswith(f"{META}.tmp"))}
    save_bundle(bundle, {"format": "x"}, META, {"w": np.zeros(3)})  # the next save cleans up
    assert sorted(os.listdir(bundle)) == [META, "weights-2"]
