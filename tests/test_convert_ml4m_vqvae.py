"""ml-4m ViT VQ-VAE tokenizers -> mmjax Tokenizer bundles and back, against the numpy
restatement of ml-4m's forward pass in ml4m_vqvae_reference."""

import json

import flax.linen
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mmjax.convert.ml4m_vqvae import convert_ml4m_vqvae, export_ml4m_vqvae, read_safetensors
from mmjax.convert.ml4m_vqvae_config import ConversionError, parse_metadata
from mmjax.tokenizers import Tokenizer, build_autoencoder, get_modality
from tests import ml4m_vqvae_reference as ref


def _setup(tmp_path_factory, name, config, seed):
    folder = tmp_path_factory.mktemp(name)
    sd = ref.random_state_dict(config, seed=seed)
    ckpt = ref.write_ml4m_safetensors(folder / "tok.safetensors", sd, config)
    bundle = convert_ml4m_vqvae(ckpt, folder / "bundle")
    return {"config": config, "sd": sd, "ckpt": ckpt, "folder": folder, "bundle": bundle,
            "tok": Tokenizer.load(bundle)}  # fmt: skip


@pytest.fixture(scope="module")
def semseg(tmp_path_factory):
    return _setup(tmp_path_factory, "semseg", ref.semseg_config(), seed=3)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return _setup(tmp_path_factory, "features", ref.feature_config(), seed=5)


def _decoded(tok, tokens) -> np.ndarray:
    """The decoder output before the codec's postprocess, as ml-4m's [B, C, H, W]."""
    decode = jax.jit(lambda v, t: tok.model.apply(v, t, method="decode"))
    return np.asarray(decode(tok.variables, np.asarray(tokens, np.int32))).transpose(0, 3, 1, 2)


def test_semseg_encode_decode_match_ml4m(semseg):
    cfg, sd, tok = semseg["config"], semseg["sd"], semseg["tok"]
    assert tok.modality == "semseg" and tok.codec.num_classes == cfg["n_labels"]
    assert tok.grid_shape == (4, 4) and tok.codebook_size == cfg["codebook_size"]
    labels = np.random.default_rng(0).integers(0, cfg["n_labels"], (3, 32, 32))
    want = ref.encode(sd, cfg, labels)
    got = np.asarray(tok.encode(labels))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 8  # the test sees many codes, not one
    logits = ref.decode(sd, cfg, want)
    np.testing.assert_allclose(_decoded(tok, got), logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(tok.decode(got)), logits.argmax(1))


def test_feature_map_encode_decode_match_ml4m(features):
    cfg, sd, tok = features["config"], features["sd"], features["tok"]
    assert tok.modality == "features" and tok.codec.channels == cfg["n_channels"]
    assert tok.resolution == 8 and tok.grid_shape == (8, 8)
    fmap = np.random.default_rng(1).standard_normal((2, cfg["n_channels"], 8, 8))
    fmap = fmap.astype(np.float32)
    want = ref.encode(sd, cfg, fmap)
    got = np.asarray(tok.encode(fmap.transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 8
    rec = ref.decode(sd, cfg, want)  # features decode to the decoder output itself
    np.testing.assert_allclose(
        np.asarray(tok.decode(got)).transpose(0, 3, 1, 2), rec, atol=1e-4, rtol=1e-4
    )


def test_stored_codes_are_decoded_not_normalized(semseg):
    """ml-4m decodes the stored EMA codes (norms < 1), not their unit versions."""
    tok, sd = semseg["tok"], semseg["sd"]
    codes = tok.model.apply(
        tok.variables, np.arange(4, dtype=np.int32).reshape(1, 2, 2),
        method=lambda m, t: m.quantizer.decode_indices(t),
    )  # fmt: skip
    want = sd["quantize._codebook.embed"][:4]
    np.testing.assert_array_equal(np.asarray(codes).reshape(4, -1), want)
    assert np.linalg.norm(want, axis=1).max() < 0.999


@pytest.mark.parametrize("which", ["semseg", "features"])
def test_export_gives_back_the_same_file(which, semseg, features):
    case = {"semseg": semseg, "features": features}[which]
    out = export_ml4m_vqvae(case["bundle"], case["folder"] / "back.safetensors")
    back = load_file(out)
    assert sorted(back) == sorted(case["sd"])
    for name, value in case["sd"].items():
        assert back[name].dtype == value.dtype, name
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    _, meta = read_safetensors(out)
    assert parse_metadata(meta) == case["config"]
    again = convert_ml4m_vqvae(out, case["folder"] / "again")
    np.testing.assert_array_equal(
        np.asarray(Tokenizer.load(again).variables["params"]["encoder"]["to_z"]["kernel"]),
        np.asarray(case["tok"].variables["params"]["encoder"]["to_z"]["kernel"]),
    )


def _rewrite(semseg, name, change):
    sd = dict(semseg["sd"])
    change(sd)
    path = semseg["folder"] / f"{name}.safetensors"
    return ref.write_ml4m_safetensors(path, sd, semseg["config"])


def test_missing_tensor_is_named(semseg):
    path = _rewrite(semseg, "missing", lambda sd: sd.pop("decoder.blocks.0.attn.qkv.bias"))
    with pytest.raises(
        ConversionError, match=r"missing tensor 'decoder\.blocks\.0\.attn\.qkv\.bias'"
    ):
        convert_ml4m_vqvae(path, semseg["folder"] / "never")
    assert not (semseg["folder"] / "never").exists()


def test_mismatched_shape_is_named(semseg):
    def widen(sd):
        sd["encoder.blocks.1.mlp.fc2.weight"] = np.zeros((16, 32), np.float32)

    path = _rewrite(semseg, "shape", widen)
    with pytest.raises(
        ConversionError,
        match=r"'encoder\.blocks\.1\.mlp\.fc2\.weight' has shape \(16, 32\), expected \(16, 64\)",
    ):
        convert_ml4m_vqvae(path, semseg["folder"] / "never")


def test_unexpected_tensor_is_named(semseg):
    path = _rewrite(
        semseg, "extra", lambda sd: sd.update({"decoder.extra": np.zeros(3, np.float32)})
    )
    with pytest.raises(ConversionError, match=r"unexpected tensor 'decoder\.extra'"):
        convert_ml4m_vqvae(path, semseg["folder"] / "never")


def test_4m_model_file_is_refused(tmp_path):
    path = tmp_path / "fourm.safetensors"
    save_file(
        {"encoder_embeddings.rgb@224.proj.weight": np.zeros((8, 3, 16, 16), np.float32),
         "encoder.0.attn.qkv.weight": np.zeros((24, 8), np.float32)},
        str(path), metadata={"domains_in": "['rgb@224']"},
    )  # fmt: skip
    with pytest.raises(ConversionError, match=r"4M model checkpoint \(tensor 'encoder_embeddings"):
        convert_ml4m_vqvae(path, tmp_path / "never")


def test_diffusion_tokenizer_and_missing_heads_are_refused(semseg, tmp_path):
    with pytest.raises(ConversionError, match="diffusion-decoder"):
        convert_ml4m_vqvae(semseg["ckpt"], tmp_path / "a", config={"beta_schedule": "linear"})
    with pytest.raises(ConversionError, match="enc_num_heads"):
        cfg = {k: v for k, v in semseg["config"].items() if k != "enc_num_heads"}
        convert_ml4m_vqvae(
            ref.write_ml4m_safetensors(tmp_path / "h.safetensors", semseg["sd"], cfg),
            tmp_path / "b",
        )


def test_mmjax_bundle_exports_and_converts_back(tmp_path):
    """A bundle trained in mmjax (ml-4m-expressible options) -> ml-4m file -> the same bundle."""
    model = {
        "type": "vit", "patch_size": 4, "width": 8, "depth": 1, "heads": 2, "mlp_dim": 16,
        "z_dim": 4, "final_norm": False, "pos_emb": "learned", "post_mlp": False,
        "in_embed_dim": 3,
    }  # fmt: skip
    quant = {"type": "vq", "codebook_size": 16, "metric": "cosine", "stored_codes_out": True}
    net = build_autoencoder(model, quant, get_modality("semseg", num_classes=4))
    shapes = jax.eval_shape(net.init, jax.random.key(0), np.zeros((1, 16, 16, 4), np.float32))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda a: rng.standard_normal(a.shape).astype(np.float32), flax.linen.unbox(shapes)
    )
    bundle = Tokenizer.save(
        tmp_path / "b", modality="semseg", model_config=model, quantizer_config=quant,
        resolution=16, variables=variables, modality_options={"num_classes": 4},
    )  # fmt: skip
    path = export_ml4m_vqvae(bundle, tmp_path / "x.safetensors")
    cfg = parse_metadata(read_safetensors(path)[1])
    assert (cfg["n_labels"], cfg["n_channels"], cfg["patch_size"]) == (4, 3, 4)
    back = Tokenizer.load(convert_ml4m_vqvae(path, tmp_path / "c"))
    want = Tokenizer.load(bundle)
    for a, b in zip(
        jax.tree.leaves(want.variables["params"]),
        jax.tree.leaves(back.variables["params"]),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert back.meta["model"] == {**model, "decoder": {k: model[k] for k in (
        "patch_size", "width", "depth", "heads", "mlp_dim")}}  # fmt: skip
    assert back.meta["quantizer"]["codebook_size"] == 16 and back.codec.num_classes == 4


def test_config_argument_replaces_missing_metadata(semseg, tmp_path):
    """A file without metadata converts with the config given as a JSON file."""
    path = tmp_path / "bare.safetensors"
    save_file(dict(semseg["sd"]), str(path))
    with pytest.raises(ConversionError, match="no VQVAE config"):
        convert_ml4m_vqvae(path, tmp_path / "never")
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(semseg["config"]))
    tok = Tokenizer.load(convert_ml4m_vqvae(path, tmp_path / "b", config=str(cfg_path)))
    np.testing.assert_array_equal(
        np.asarray(tok.variables["quantizer_stats"]["quantizer"]["codebook"]),
        semseg["sd"]["quantize._codebook.embed"],
    )


def test_feature_map_codec_loss_and_validation():
    """Smooth L1 (Huber, delta 1) as ml-4m's feature tokenizers train; wrong input refused."""
    codec = get_modality("features", channels=3)
    y = np.array([[[[0.5, -2.0, 0.0]]]], np.float32)
    t = np.zeros_like(y)
    loss, terms = codec.loss(y, t)
    want = np.mean([0.5 * 0.5**2, 2.0 - 0.5, 0.0])
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    assert set(terms) == {"smooth_l1"}
    with pytest.raises(ValueError, match="expected 3 channels"):
        codec.validate(np.zeros((1, 2, 2, 4), np.float32))
    with pytest.raises(ValueError, match="finite"):
        codec.validate(np.full((1, 2, 2, 3), np.nan, np.float32))


def test_other_resolution_uses_ml4ms_bicubic_positions(semseg, tmp_path):
    """Converted for 48 px (6 x 6 tokens) from tables stored at 4 x 4: ml-4m's tokens there."""
    cfg, sd = semseg["config"], semseg["sd"]
    bundle = convert_ml4m_vqvae(semseg["ckpt"], tmp_path / "b48", resolution=48)
    tok = Tokenizer.load(bundle)
    assert tok.grid_shape == (6, 6) and tok.source["resized_from_grid"] == 4
    labels = np.random.default_rng(4).integers(0, cfg["n_labels"], (2, 48, 48))
    want = ref.encode(sd, cfg, labels)
    np.testing.assert_array_equal(np.asarray(tok.encode(labels)), want)
    np.testing.assert_array_equal(np.asarray(tok.decode(want)), ref.decode(sd, cfg, want).argmax(1))
    with pytest.raises(ConversionError, match="resized from the checkpoint's 4x4 grid"):
        export_ml4m_vqvae(bundle, tmp_path / "x.safetensors")
    with pytest.raises(ConversionError, match="resolution 50 is not a positive multiple"):
        convert_ml4m_vqvae(semseg["ckpt"], tmp_path / "b50", resolution=50)
