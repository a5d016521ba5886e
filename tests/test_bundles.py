"""Bundle directories (Orbax weights beside a JSON of metadata): round trip, restore onto other
meshes with the rules' shardings and the same outputs (4M and Tokenizer bundles saved from
sharded weights), replacement that never exposes a half-written bundle, errors that name the
path, and the refusal and upgrade of msgpack-era bundles."""

import json
import os

import flax.linen as nn
import flax.serialization
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.fourm import build_registry
from mmjax.fourm.bundle import load_fourm, save_fourm
from mmjax.fourm.model import example_batch
from mmjax.fourm.presets import build_fourm
from mmjax.parallel import DEFAULT_RULES, create_mesh, state_shardings
from mmjax.storage import bundles
from mmjax.storage.bundles import load_bundle, save_bundle
from mmjax.storage.upgrade import main as upgrade_main
from mmjax.tokenizers import MODALITIES, Tokenizer, build_autoencoder

WEIGHTS = {
    "dense": {
        "kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
        "bias": np.ones(3, np.float32),
    },
    "codebook": np.arange(4, dtype=np.int32),
}
MESHES = {  # where the bundles saved on (data=2, fsdp=4) are restored
    "fsdp8": {"data": 1, "fsdp": 8, "tensor": 1},
    "tensor2_fsdp4": {"data": 1, "fsdp": 4, "tensor": 2},
    "one_device": None,
}


def _save(path, meta=None, weights=WEIGHTS):
    meta = {"format": "test-v1", "grid": (8, 8), **(meta or {})}
    return save_bundle(path, meta, "meta.json", weights)


def _load(path, **kwargs):
    return load_bundle(path, "meta.json", "test-v1", "load_test", "bundle", **kwargs)


def _assert_tree_equal(got, want):
    flat, ref = jax.tree.leaves_with_path(got), jax.tree.leaves_with_path(want)
    assert [p for p, _ in flat] == [p for p, _ in ref]
    for (path, a), (_, b) in zip(flat, ref, strict=True):
        assert a.dtype == b.dtype, path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


# -- the storage layer ---------------------------------------------------------------------------


def test_round_trip_keeps_values_dtypes_and_meta(tmp_path):
    _save(tmp_path / "b")
    meta, weights = _load(tmp_path / "b")
    assert meta["weights"] == "weights-0"
    assert set(meta["versions"]) == {"mmjax", "jax", "flax", "orbax-checkpoint"}
    assert meta["versions"]["jax"] == jax.__version__
    rest = {k: v for k, v in meta.items() if k not in ("weights", "versions", "checksums")}
    assert rest == {"format": "test-v1", "grid": [8, 8]}  # tuples become JSON lists
    _assert_tree_equal(weights, WEIGHTS)
    device = jax.local_devices()[0]  # no mesh: everything on one device
    assert all(leaf.devices() == {device} for leaf in jax.tree.leaves(weights))
    assert sorted(os.listdir(tmp_path / "b")) == ["meta.json", "weights-0"]


def test_a_relative_path_saves_and_loads_like_an_absolute_one(tmp_path, monkeypatch):
    """The README's demo writes to workdirs/demo: Orbax refuses relative paths, so the bundle
    layer makes local ones absolute (a save, a second save, a load, from another cwd)."""
    monkeypatch.chdir(tmp_path)
    _save("workdirs/b")
    _save(os.path.join("workdirs", "b"))
    meta, weights = _load("workdirs/b")
    assert meta["weights"] == "weights-1"
    _assert_tree_equal(weights, WEIGHTS)
    assert sorted(os.listdir(tmp_path / "workdirs" / "b")) == ["meta.json", "weights-1"]


def test_a_workdir_holding_the_bundle_loads(tmp_path):
    _save(tmp_path / "run" / "bundle")
    meta, _ = _load(tmp_path / "run")
    assert meta["format"] == "test-v1"


def test_saving_again_replaces_the_bundle_and_leaves_no_leftovers(tmp_path):
    _save(tmp_path / "b", {"version": 1})
    os.makedirs(tmp_path / "b" / "weights-7.orbax-checkpoint-tmp-1234")  # a crashed write
    _save(tmp_path / "b", {"version": 2}, {"x": np.zeros(2)})
    meta, weights = _load(tmp_path / "b")
    assert meta["version"] == 2 and meta["weights"] == "weights-8"
    assert set(weights) == {"x"}
    assert sorted(os.listdir(tmp_path)) == ["b"]
    assert sorted(os.listdir(tmp_path / "b")) == ["meta.json", "weights-8"]


def test_an_interrupted_replacement_leaves_the_old_bundle_loadable(tmp_path, monkeypatch):
    _save(tmp_path / "b", {"version": 1})

    def crash():  # after the new weights are written, before the metadata names them
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(bundles, "versions", crash)
        with pytest.raises(KeyboardInterrupt):
            _save(tmp_path / "b", {"version": 2}, {"x": np.zeros(2)})
    assert sorted(os.listdir(tmp_path / "b")) == ["meta.json", "weights-0", "weights-1"]
    meta, weights = _load(tmp_path / "b")
    assert meta["version"] == 1
    _assert_tree_equal(weights, WEIGHTS)
    # A write cut short inside Orbax leaves only its temporary folder, never a finished one.
    os.makedirs(tmp_path / "b" / "weights-2.orbax-checkpoint-tmp-99" / "d")
    assert _load(tmp_path / "b")[0]["version"] == 1
    _save(tmp_path / "b", {"version": 3})  # the next save cleans up
    assert sorted(os.listdir(tmp_path / "b")) == ["meta.json", "weights-3"]
    assert _load(tmp_path / "b")[0]["version"] == 3


def test_errors_name_the_path_and_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load_test: .*nothing.*meta\.json not found"):
        _load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty has no meta\.json"):
        _load(tmp_path / "empty")
    _save(tmp_path / "b")
    (tmp_path / "b" / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"load_test: .*b/meta\.json is unreadable"):
        _load(tmp_path / "b")
    _save(tmp_path / "c", {"format": "other-v9"})
    with pytest.raises(ValueError, match=r"format 'other-v9', expected 'test-v1'"):
        _load(tmp_path / "c")
    _save(tmp_path / "d")
    (tmp_path / "d" / "meta.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match=r"format 'list', expected 'test-v1'"):
        _load(tmp_path / "d")
    _save(tmp_path / "e")
    (tmp_path / "e" / "weights-0").rename(tmp_path / "e" / "moved")
    with pytest.raises(FileNotFoundError, match=r"e/weights-0 not found \(named by .*meta\.json"):
        _load(tmp_path / "e")
    # The model's own tree, checked against the bundle's: another model is refused.
    _save(tmp_path / "f")
    other = {"dense": {"kernel": jax.ShapeDtypeStruct((3, 3), np.float32)}}
    with pytest.raises(ValueError, match=r"f/weights-0 holds arrays of other shapes: "):
        _load(tmp_path / "f", abstract=lambda meta: other)
    more = {**WEIGHTS, "head": jax.ShapeDtypeStruct((3,), np.float32)}
    with pytest.raises(ValueError, match=r"f/weights-0 lacks arrays the model has: head"):
        _load(tmp_path / "f", abstract=lambda meta: more)


def test_msgpack_bundles_are_refused_and_upgraded_by_the_cli(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({"format": "test-v1", "grid": [8, 8]}))
    (old / "w.msgpack").write_bytes(flax.serialization.msgpack_serialize(WEIGHTS))
    with pytest.raises(ValueError) as refused:
        _load(old)
    assert f"python -m mmjax.storage.upgrade {old}" in str(refused.value)
    assert "w.msgpack" in str(refused.value)
    # To a new directory: the old one stays as it was.
    assert upgrade_main([str(old), str(tmp_path / "new")]) == 0
    meta, weights = _load(tmp_path / "new")
    assert meta["grid"] == [8, 8]
    _assert_tree_equal(weights, WEIGHTS)
    assert sorted(os.listdir(old)) == ["meta.json", "w.msgpack"]
    # In place: the msgpack file goes once the Orbax bundle is complete.
    assert upgrade_main([str(old)]) == 0
    assert sorted(os.listdir(old)) == ["meta.json", "weights-0"]
    _assert_tree_equal(_load(old)[1], WEIGHTS)
    with pytest.raises(ValueError, match="already an Orbax bundle"):  # nothing left to upgrade
        upgrade_main([str(old)])


# -- 4M: saved sharded, restored onto other meshes ------------------------------------------------

REG = {
    "rgb": dict(kind="pixels", grid=(2, 2), patch_size=4, channels=3),
    "tok_a": dict(kind="image_tokens", vocab_size=24, grid=(3, 3)),
    "cap": dict(kind="sequence", vocab_size=40, max_length=8),
}
FOURM = {"size": "tiny", "encoder_depth": 1, "decoder_depth": 1}


def _fourm_batch(registry, seed=0):
    """8 rows of 12 encoder slots (any modality) and 10 decoder slots (target modalities),
    each a distinct random (modality, position) with a random token."""
    rng = np.random.default_rng(seed)
    batch = example_batch(registry, 8, 12, 10)
    pairs = [(m, p) for m, s in enumerate(registry) for p in range(s.num_tokens)]
    targets = [(m, p) for m, p in pairs if registry.specs[m].is_target]
    for b in range(8):
        for prefix, pool, n in (("enc", pairs, 12), ("dec", targets, 10)):
            for slot, k in enumerate(rng.choice(len(pool), n, replace=False)):
                m, p = pool[k]
                spec = registry.specs[m]
                batch[f"{prefix}_modality"][b, slot], batch[f"{prefix}_positions"][b, slot] = m, p
                token = rng.integers(spec.vocab_size or 1)
                batch["enc_tokens" if prefix == "enc" else "dec_target_tokens"][b, slot] = token
                if prefix == "dec" and spec.kind == "sequence":
                    batch["dec_input_tokens"][b, slot] = rng.integers(spec.vocab_size)
    batch["pixels_rgb"] = rng.random(batch["pixels_rgb"].shape).astype(np.float32)
    return batch


@pytest.fixture(scope="module")
def fourm_bundle(tmp_path_factory, mesh):
    """(bundle dir, batch, logits of the saved params on one device, abstract variables):
    a tiny 4M whose params were born sharded on the (data=2, fsdp=4) mesh when saved."""
    registry = build_registry(REG)
    model = build_fourm(FOURM, registry)
    batch = _fourm_batch(registry)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))
    shardings = state_shardings(abstract, mesh)
    variables = jax.jit(
        lambda: nn.unbox(model.init(jax.random.key(0), batch)), out_shardings=shardings
    )()
    kernel = variables["params"]["encoder_blocks_0"]["mlp"]["up"]["kernel"]
    assert kernel.sharding.spec[0] == "fsdp" and len(kernel.addressable_shards) == 8
    host = jax.device_get(variables)
    logits = np.asarray(jax.jit(model.apply)(host, batch))
    path = tmp_path_factory.mktemp("fourm") / "bundle"
    save_fourm(
        path, model_config={**FOURM, "sharding_rules": DEFAULT_RULES}, modalities=REG,
        params=variables["params"], input_budget=12, target_budget=10,
    )  # fmt: skip
    return path, batch, logits, abstract


@pytest.mark.parametrize("where", MESHES)
def test_fourm_bundle_restores_onto_any_mesh_with_the_same_logits(fourm_bundle, where):
    path, batch, want, abstract = fourm_bundle
    mesh = None if MESHES[where] is None else create_mesh(MESHES[where])
    model, variables, registry, meta = load_fourm(path, mesh=mesh)
    assert meta["input_budget"] == 12 and registry == build_registry(REG)
    assert meta["sharding_rules"] == json.loads(json.dumps(DEFAULT_RULES))
    if mesh is None:
        device = jax.local_devices()[0]
        assert all(leaf.devices() == {device} for leaf in jax.tree.leaves(variables))
        got = jax.jit(model.apply)(variables, batch)
    else:
        expected = jax.tree.leaves(state_shardings(abstract, mesh, DEFAULT_RULES))
        assert [leaf.sharding for leaf in jax.tree.leaves(variables)] == expected
        kernel = variables["params"]["encoder_blocks_0"]["mlp"]["up"]["kernel"]  # [embed, mlp]
        assert tuple(kernel.sharding.spec) == ("fsdp", "tensor" if "tensor" in where else None)
        shard = (kernel.shape[0] // mesh.shape["fsdp"], kernel.shape[1] // mesh.shape["tensor"])
        assert all(s.data.shape == shard for s in kernel.addressable_shards)  # its shard only
        assert model.sharding_rules == DEFAULT_RULES
        data = NamedSharding(mesh, P(("data", "fsdp")))
        with jax.set_mesh(mesh):
            got = jax.jit(model.apply)(variables, jax.device_put(batch, data))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_fourm_bundle_restores_with_other_rules(fourm_bundle):
    path = fourm_bundle[0]
    replicated = (("embed", None), ("mlp", None), ("heads", None), ("vocab", None))
    mesh = create_mesh(MESHES["fsdp8"])
    model, variables, _, _ = load_fourm(path, mesh=mesh, rules=replicated)
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(variables))
    assert model.sharding_rules == replicated


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda m: m["modalities"]["tok_a"].update(vocab_size=30), "modalities"),
        (lambda m: m["modalities"].pop("cap"), "modalities"),
        (lambda m: m["model"].update(encoder_depth=2), "model"),
    ],
)
def test_fourm_metadata_that_disagrees_with_its_params_names_the_field(
    fourm_bundle, tmp_path, edit, field
):
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(fourm_bundle[0], bad)
    meta = json.loads((bad / "fourm.json").read_text())
    edit(meta)
    (bad / "fourm.json").write_text(json.dumps(meta))
    with pytest.raises(
        bundles.BundleError,
        match=rf"load_fourm: {bad}/weights-0 .*\(the metadata's '{field}' field describes",
    ):
        load_fourm(bad)


# -- Tokenizer: saved sharded, restored onto a mesh or one device ---------------------------------

TOK_MODEL = dict(type="vit", size="tiny", patch_size=8, width=32, depth=1, heads=2, mlp_dim=64)
TOK_MODEL["z_dim"] = 8
TOK_QUANTIZER = {"type": "fsq", "levels": [4, 4, 4]}


@pytest.fixture(scope="module")
def tokenizer_bundle(tmp_path_factory, mesh):
    """(bundle dir, images, reference tokens, reference decoded images): a 32 px rgb ViT
    tokenizer whose variables were sharded on the (data=2, fsdp=4) mesh when saved."""
    model = build_autoencoder(TOK_MODEL, TOK_QUANTIZER, "rgb")
    x = np.zeros((1, 32, 32, MODALITIES["rgb"].in_channels), np.float32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    init = lambda: nn.unbox(model.init(jax.random.key(0), x))
    variables = jax.jit(init, out_shardings=state_shardings(abstract, mesh))()
    host = jax.device_get(variables)
    codec = MODALITIES["rgb"]
    images = np.random.default_rng(0).random((8, 32, 32, 3)).astype(np.float32)
    encode = jax.jit(lambda v, x: model.apply(v, codec.preprocess(x), method="encode"))
    decode = jax.jit(lambda v, t: codec.postprocess(model.apply(v, t, method="decode")))
    tokens = np.asarray(encode(host, images))
    decoded = np.asarray(decode(host, tokens))
    path = tmp_path_factory.mktemp("tokenizer") / "bundle"
    Tokenizer.save(
        path, modality="rgb", model_config=TOK_MODEL, quantizer_config=TOK_QUANTIZER,
        resolution=32, variables=variables,
    )  # fmt: skip
    return path, images, tokens, decoded, abstract


@pytest.mark.parametrize("where", ["one_device", "fsdp8"])
def test_tokenizer_bundle_restores_sharded_and_encodes_the_same(tokenizer_bundle, where):
    path, images, tokens, decoded, abstract = tokenizer_bundle
    mesh = None if MESHES[where] is None else create_mesh(MESHES[where])
    tok = Tokenizer.load(str(path), mesh=mesh)
    assert tok.grid_shape == (4, 4) and tok.meta["versions"]["flax"] == flax.__version__
    if mesh is not None:
        expected = jax.tree.leaves(state_shardings(abstract, mesh, DEFAULT_RULES))
        assert [leaf.sharding for leaf in jax.tree.leaves(tok.variables)] == expected
        assert any("fsdp" in leaf.sharding.spec for leaf in jax.tree.leaves(tok.variables))
    got = tok.encode(images)
    np.testing.assert_array_equal(np.asarray(got), tokens)
    np.testing.assert_allclose(np.asarray(tok.decode(tokens)), decoded, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(tok.decode(got[:3])), decoded[:3], rtol=1e-5, atol=1e-5)
