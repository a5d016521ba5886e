"""ml-4m 4M / 4M-21 checkpoints -> mmjax 4M bundles and back (`mmjax.convert`), against the
independent numpy restatement of ml-4m's forward pass in tests/ml4m_reference.py."""

import os
import re

import jax
import numpy as np
import pytest

from mmjax.convert import batch_from_mod_dict, convert_ml4m, export_ml4m, logits_by_domain
from mmjax.convert.__main__ import main as convert_main
from mmjax.convert.ml4m_fourm import looks_like_vqvae, read_checkpoint
from mmjax.convert.safetensors_io import read_safetensors, write_safetensors
from mmjax.fourm.bundle import load_fourm
from tests import ml4m_reference as ref

ATOL = 1e-4


def _fixed_pos(name: str, config: dict) -> bool:
    """A sin-cos position buffer (recomputed on export, not stored)."""
    if not name.endswith(".pos_emb"):
        return False
    return ref.ml4m_modality_info(config)[name.split(".")[1]]["sincos_pos_emb"]


def _variant(tmp_path_factory, name: str, config: dict, seed: int = 0, cli: bool = False):
    root = tmp_path_factory.mktemp(f"ml4m_{name}")
    state = ref.ml4m_state_dict(config, seed=seed)
    ckpt, out = root / "model.safetensors", root / "bundle"
    ref.save_ml4m_checkpoint(ckpt, state, config)
    if cli:
        refs = ["--tokenizer", "tok_depth@224=/tokenizers/depth", "--text-tokenizer", "text.json"]
        assert convert_main(["ml4m", "--checkpoint", str(ckpt), "--out", str(out), *refs]) == 0
    else:
        convert_ml4m(ckpt, out)
    model, variables, registry, meta = load_fourm(out)
    return dict(
        config=config, state=state, ckpt=ckpt, bundle=out, root=root, model=model,
        variables=variables, registry=registry, meta=meta,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fm4(tmp_path_factory):
    return _variant(tmp_path_factory, "4m", ref.ml4m_config("4m"), seed=1, cli=True)


@pytest.fixture(scope="module")
def fm21(tmp_path_factory):
    return _variant(tmp_path_factory, "4m21", ref.ml4m_config("4m21"), seed=2)


def _mmjax_logits(v, mod_dict, n_enc=None, n_dec=None):
    cfg = v["config"]
    if n_enc is None:
        n_enc, n_dec = ref.ml4m_token_counts(cfg, mod_dict)
    batch, targets = batch_from_mod_dict(
        mod_dict, v["registry"], cfg["domains_in"], cfg["domains_out"], n_enc, n_dec
    )
    logits = np.asarray(jax.jit(v["model"].apply)(v["variables"], batch))
    return logits_by_domain(logits, targets, v["registry"]), n_enc, n_dec


def _assert_logits_match(v, mod_dict, n_enc=None, n_dec=None):
    got, n_enc, n_dec = _mmjax_logits(v, mod_dict, n_enc, n_dec)
    want = ref.ml4m_logits(v["state"], v["config"], mod_dict, n_enc, n_dec)
    assert set(got) == set(want)
    assert sum(w.size for w in want.values()) > 0
    for name, w in want.items():
        assert got[name].shape == w.shape, name
        np.testing.assert_allclose(got[name], w, atol=ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("which", ["fm4", "fm21"])
def test_logits_match_ml4m(which, request):
    v = request.getfixturevalue(which)
    _assert_logits_match(v, ref.ml4m_example_inputs(v["config"], batch_size=3, seed=5))


def test_registry_keeps_ml4m_names_and_sizes(fm21):
    cfg, registry = fm21["config"], fm21["registry"]
    info = ref.ml4m_modality_info(cfg)
    assert set(registry.names) == set(cfg["domains_in"]) | set(cfg["domains_out"])
    kinds = {"pixels": "pixels", "image_tokens": "image_tokens", "sequence": "sequence",
             "sequence_emb": "sequence_embedding"}  # fmt: skip
    for name, mi in info.items():
        spec = registry[name]
        assert spec.kind == kinds[mi["encoder"] or mi["decoder"]], name
        if spec.kind in ("image_tokens", "sequence"):
            assert spec.vocab_size == mi["vocab_size"], name
        if mi["type"] == "img":
            assert spec.grid == mi["grid"], name
        else:
            assert spec.max_length == mi["max_length"], name
        assert spec.learned_positions == (not mi["sincos_pos_emb"]), name
    assert registry["t5_caption"].embed_dim == info["t5_caption"]["orig_emb_dim"]
    assert registry["tok_rgb@224"].tokenizer.startswith("EPFL-VILAB/4M_tokenizers_rgb")
    assert not registry["t5_caption"].is_target and not registry["rgb@224"].is_target


def _assert_same_state(back: dict, state: dict, config: dict):
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == np.float32 and back[k].shape == v.shape, k
        if _fixed_pos(k, config):
            np.testing.assert_allclose(back[k], v, atol=1e-6, rtol=0, err_msg=k)
        else:
            np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_cli_tokenizer_references(fm4):
    reg = fm4["registry"]
    assert reg["tok_depth@224"].tokenizer == "/tokenizers/depth"
    assert reg["tok_rgb@224"].tokenizer.startswith("EPFL-VILAB/4M_tokenizers_rgb")
    assert reg["caption"].tokenizer == reg["det"].tokenizer == "text.json"
    assert fm4["meta"]["text_tokenizer"] == "text.json"


def test_export_is_identity_cli(fm4):
    out = fm4["root"] / "back.safetensors"
    assert convert_main(["to-ml4m", "--bundle", str(fm4["bundle"]), "--out", str(out)]) == 0
    back, metadata = read_safetensors(out)
    _assert_same_state(back, fm4["state"], fm4["config"])
    assert metadata == {k: str(v) for k, v in fm4["config"].items()}


def test_export_is_identity_and_reimports(fm21):
    out = fm21["root"] / "back.safetensors"
    export_ml4m(fm21["bundle"], out)
    back, _ = read_safetensors(out)
    _assert_same_state(back, fm21["state"], fm21["config"])
    _, config, _ = read_checkpoint(out)
    assert config["domains_out"] == fm21["config"]["domains_out"]
    assert not looks_like_vqvae(back, config)


@pytest.mark.slow
def test_register_tokens_and_qk_norm(tmp_path_factory):
    cfg = dict(ref.ml4m_config("4m21"), num_register_tokens=2, qk_norm=True)
    v = _variant(tmp_path_factory, "reg", cfg, seed=3)
    assert v["model"].num_register_tokens == 2 and v["model"].qk_norm
    _assert_logits_match(v, ref.ml4m_example_inputs(cfg, batch_size=2, seed=6))
    out = v["root"] / "back.safetensors"
    export_ml4m(v["bundle"], out)
    _assert_same_state(read_safetensors(out)[0], v["state"], cfg)


@pytest.mark.slow
def test_empty_context_attends_uniformly(fm4):
    """No input token at all: ml-4m's decoder averages the padding context uniformly."""
    mod_dict = ref.ml4m_example_inputs(fm4["config"], batch_size=2, seed=7)
    for d in mod_dict.values():
        d["input_mask"] = np.ones_like(np.asarray(d["input_mask"], bool))
    _, n_dec = ref.ml4m_token_counts(fm4["config"], mod_dict)
    _assert_logits_match(fm4, mod_dict, n_enc=5, n_dec=n_dec)


def _rewrite(src, dst, edit):
    state, metadata = read_safetensors(src)
    edit(state)
    write_safetensors(dst, state, metadata)


def test_bad_checkpoints_name_the_tensor(fm4, tmp_path):
    other = tmp_path / "other.safetensors"
    write_safetensors(other, {"features.0.weight": np.zeros((4, 3), np.float32)}, {"a": "1"})
    with pytest.raises(ValueError, match="not an ml-4m 4M checkpoint"):
        convert_ml4m(other, tmp_path / "b0")
    missing = tmp_path / "missing.safetensors"
    _rewrite(fm4["ckpt"], missing, lambda s: s.pop("decoder.1.mlp.fc2.weight"))
    with pytest.raises(ValueError, match=r"missing tensor 'decoder\.1\.mlp\.fc2\.weight'"):
        convert_ml4m(missing, tmp_path / "b1")
    shape = tmp_path / "shape.safetensors"

    def widen(s):
        s["encoder.0.attn.qkv.weight"] = np.zeros((97, 32), np.float32)

    _rewrite(fm4["ckpt"], shape, widen)
    with pytest.raises(ValueError, match=r"'encoder\.0\.attn\.qkv\.weight' has shape \(97, 32\)"):
        convert_ml4m(shape, tmp_path / "b2")
    extra = tmp_path / "extra.safetensors"
    _rewrite(fm4["ckpt"], extra, lambda s: s.update({"encoder.9.norm1.weight": np.ones(32)}))
    with pytest.raises(ValueError, match=r"encoder\.9\.norm1\.weight"):
        convert_ml4m(extra, tmp_path / "b3")
    for bad in (tmp_path / "b0", tmp_path / "b1", tmp_path / "b2", tmp_path / "b3"):
        assert not (bad / "fourm.json").exists()


def test_unsupported_config_is_named(fm4, tmp_path):
    state, metadata = read_safetensors(fm4["ckpt"])
    path = tmp_path / "causal.safetensors"
    write_safetensors(path, state, {**metadata, "decoder_causal_mask": "True"})
    with pytest.raises(ValueError, match="decoder_causal_mask"):
        convert_ml4m(path, tmp_path / "out")
    bare = tmp_path / "bare.safetensors"
    write_safetensors(bare, state, {})
    with pytest.raises(ValueError, match="--config"):
        convert_ml4m(bare, tmp_path / "out")


def test_config_json_supplies_missing_metadata(fm4, tmp_path):
    import json

    state, _ = read_safetensors(fm4["ckpt"])
    bare = tmp_path / "bare.safetensors"
    write_safetensors(bare, state, {})
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(fm4["config"]))
    convert_ml4m(bare, tmp_path / "out", config=cfg)
    _, variables, _, _ = load_fourm(tmp_path / "out")
    emb = np.asarray(variables["params"]["embeddings"]["tok_emb_caption"])
    np.testing.assert_array_equal(emb, fm4["state"]["encoder_embeddings.caption.token_emb.weight"])


REAL_DIR = os.environ.get("MMJAX_ML4M_DIR")
TEXT_TOKENIZER = "text_tokenizer_4m_wordpiece_30k.json"  # ml-4m's, beside the checkpoints


@pytest.mark.slow
@pytest.mark.skipif(
    not REAL_DIR,
    reason="set MMJAX_ML4M_DIR to a folder of released ml-4m 4M .safetensors files to run",
)
def test_released_checkpoints_convert_and_run(tmp_path):
    """Every released 4M file converts and runs; with ml-4m's text tokenizer beside them,
    rgb -> caption greedy decoding of a rendered scene gives words."""
    files = sorted(f for f in os.listdir(REAL_DIR) if f.endswith(".safetensors"))
    assert files, f"MMJAX_ML4M_DIR={REAL_DIR} holds no .safetensors file"
    text_path = os.path.join(REAL_DIR, TEXT_TOKENIZER)
    ran = 0
    for i, name in enumerate(files):
        path = os.path.join(REAL_DIR, name)
        state, config, _ = read_checkpoint(path)
        if looks_like_vqvae(state, config):
            continue
        convert_ml4m(path, tmp_path / f"b{i}")
        model, variables, registry, _ = load_fourm(tmp_path / f"b{i}")
        batch = _one_token_batch(registry)
        logits = np.asarray(model.apply(variables, batch))
        assert np.isfinite(logits).all(), name
        if os.path.exists(text_path) and {"rgb@224", "caption"} <= set(registry.names):
            assert re.search(r"[a-z]{3,}", _greedy_caption(model, variables, registry, text_path))
        ran += 1
    assert ran, f"MMJAX_ML4M_DIR={REAL_DIR} holds no 4M model (only tokenizers)"


def _greedy_caption(model, variables, registry, text_path) -> str:
    from mmjax.data.scenes import generate as render_scene
    from mmjax.fourm.generation import GenerationStep, generate
    from mmjax.text import load_ml4m_tokenizer, ml4m_ids_to_caption

    text = load_ml4m_tokenizer(text_path)
    size = registry["rgb@224"].image_size[0]
    image = render_scene(0, "validation", size)["rgb"][None]
    step = GenerationStep.ml4m("caption", temperature=0.0)
    out = generate(model, variables, registry, {"rgb@224": image}, [step], jax.random.key(0),
                   eos_id=text.eos_id, start_id=text.start_id)  # fmt: skip
    return ml4m_ids_to_caption(text, np.asarray(out["caption"])[0])


def _one_token_batch(registry):
    """One input token of the first token modality, one image-token target."""
    from mmjax.fourm.model import example_batch

    batch = example_batch(registry, batch_size=1, enc_len=1, dec_len=1)
    tok = next(s for s in registry if s.kind in ("image_tokens", "sequence"))
    tgt = next(s for s in registry if s.kind == "image_tokens")
    batch["enc_modality"][:] = registry.index(tok.name)
    batch["dec_modality"][:] = registry.index(tgt.name)
    return batch


@pytest.mark.slow
def test_scoring_and_generation_run_on_a_converted_model(fm4):
    """mmjax's scoring gives ml-4m's log-probabilities; generation runs on ml-4m names."""
    from mmjax.fourm.generation import GenerationStep, generate, image_token_log_probs

    rng = np.random.default_rng(11)
    cond_name, target = "tok_rgb@224", "tok_depth@224"
    reg = fm4["registry"]
    n = reg[target].num_tokens
    cond = rng.integers(0, reg[cond_name].vocab_size, (2, n))
    tokens = rng.integers(0, reg[target].vocab_size, (2, n))
    got = image_token_log_probs(
        fm4["model"], fm4["variables"], reg, {cond_name: cond}, target, tokens
    )
    g = int(np.sqrt(n))
    dam = np.zeros((2, n), np.int64)
    dam[:, 0] = n
    none, every = np.ones((2, n), bool), np.zeros((2, n), bool)  # True = not used
    mod_dict = {
        cond_name: dict(tensor=cond.reshape(2, g, g), input_mask=every, target_mask=none,
                        decoder_attention_mask=np.zeros_like(dam)),
        target: dict(tensor=tokens.reshape(2, g, g), input_mask=none, target_mask=every,
                     decoder_attention_mask=dam),
    }  # fmt: skip
    logits = ref.ml4m_logits(fm4["state"], fm4["config"], mod_dict, n, n)[target]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    logp -= logits.max(-1, keepdims=True)
    want = np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    out = generate(
        fm4["model"], fm4["variables"], reg, {cond_name: cond},
        [GenerationStep(target, steps=2, temperature=0.0)], jax.random.key(0),
    )  # fmt: skip
    assert out[target].shape == (2, n)
    assert out[target].min() >= 0 and out[target].max() < reg[target].vocab_size


def test_cli_routes_vqvae_checkpoints_to_the_tokenizer_converter(tmp_path):
    """`ml4m` on a VQ-VAE file writes a Tokenizer bundle; `to-ml4m` on it gives the file back."""
    from tests import ml4m_vqvae_reference as vq

    config = vq.semseg_config()
    sd = vq.random_state_dict(config, seed=1)
    ckpt = vq.write_ml4m_safetensors(tmp_path / "tok.safetensors", sd, config)
    state, parsed, _ = read_checkpoint(ckpt)
    assert looks_like_vqvae(state, parsed)
    out, back = tmp_path / "tok", tmp_path / "back.safetensors"
    assert convert_main(["ml4m", "--checkpoint", ckpt, "--out", str(out)]) == 0
    assert not (out / "fourm.json").exists()
    assert convert_main(["to-ml4m", "--bundle", str(out), "--out", str(back)]) == 0
    got, _ = read_safetensors(back)
    assert set(got) == set(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_export_refuses_bundles_not_converted_from_ml4m(fm4):
    from mmjax.convert.ml4m_fourm import params_to_state

    meta = {k: v for k, v in fm4["meta"].items() if k != "ml4m"}
    with pytest.raises(ValueError, match="not converted from ml-4m"):
        params_to_state(fm4["variables"]["params"], meta)


@pytest.mark.slow
def test_scoring_a_converted_4m21_model_on_caption(fm21):
    """A 4M-21 registry (pixels, sequence embeddings, learned positions) scores as ml-4m."""
    from mmjax.fourm.generation import image_token_log_probs

    rng = np.random.default_rng(12)
    reg, target = fm21["registry"], "tok_dinov2_global"
    n, length = reg[target].num_tokens, 6
    caption = rng.integers(1, reg["caption"].vocab_size, (2, length))
    tokens = rng.integers(0, reg[target].vocab_size, (2, n))
    got = image_token_log_probs(
        fm21["model"], fm21["variables"], reg, {"caption": caption}, target, tokens
    )
    dam = np.zeros((2, n), np.int64)
    dam[:, 0] = n
    none, every = np.ones((2, n), bool), np.zeros((2, n), bool)  # True = not used
    mod_dict = {
        "caption": dict(tensor=caption, input_mask=np.zeros((2, length), bool),
                        target_mask=np.ones((2, length), bool),
                        decoder_attention_mask=np.zeros((2, length), np.int64)),
        target: dict(tensor=tokens.reshape(2, 4, 4), input_mask=none, target_mask=every,
                     decoder_attention_mask=dam),
    }  # fmt: skip
    logits = ref.ml4m_logits(fm21["state"], fm21["config"], mod_dict, length, n)[target]
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    want = np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_generation_on_a_converted_model_is_ml4m_greedy(fm21):
    """rgb -> image tokens in one MaskGIT step and rgb -> caption autoregressively, both at
    temperature 0 through mmjax's `generate`, are the argmax of ml-4m's logits."""
    from mmjax.fourm.generation import GenerationStep, generate
    from tests import ml4m_reference_config as ref_config

    reg, b, start = fm21["registry"], 2, 5
    size = reg["rgb@224"].image_size
    images = np.random.default_rng(3).random((b, *size, 3)).astype(np.float32)
    target, n = "tok_semseg@224", reg["tok_semseg@224"].num_tokens
    steps = [GenerationStep(target, steps=1, temperature=0.0),
             GenerationStep("caption", scheme="ar", temperature=0.0)]  # fmt: skip
    out = generate(fm21["model"], fm21["variables"], reg, {"rgb@224": images}, steps,
                   jax.random.key(0), eos_id=None, start_id=start)  # fmt: skip

    mean, std = np.asarray(ref_config.IMAGENET_MEAN), np.asarray(ref_config.IMAGENET_STD)
    pixels = ((images - mean) / std).transpose(0, 3, 1, 2)
    none = dict(target_mask=np.ones((b, n), bool), decoder_attention_mask=np.zeros((b, n), int))
    rgb = dict(tensor=pixels, input_mask=np.zeros((b, n), bool), **none)
    dam = np.zeros((b, n), np.int64)
    dam[:, 0] = n
    grid = reg[target].grid
    semseg = dict(tensor=np.zeros((b, *grid), np.int64), input_mask=np.ones((b, n), bool),
                  target_mask=np.zeros((b, n), bool), decoder_attention_mask=dam)  # fmt: skip
    logits = ref.ml4m_logits(fm21["state"], fm21["config"], {"rgb@224": rgb, target: semseg}, n, n)
    np.testing.assert_array_equal(out[target], logits[target].argmax(-1))

    # The caption conditions on rgb and the generated semseg tokens, as the chain feeds them.
    tokens = np.asarray(out[target]).reshape(b, *grid)
    semseg_in = dict(tensor=tokens, input_mask=np.zeros((b, n), bool), **none)
    seq = np.full((b, 1), start)
    for _ in range(4):  # greedy, as ml-4m decodes: [S_1] y1 .. yk -> y(k+1)
        k = seq.shape[1]
        cap = dict(tensor=np.concatenate([seq, np.zeros((b, 1), int)], 1),
                   input_mask=np.ones((b, k + 1), bool), target_mask=np.zeros((b, k + 1), bool),
                   decoder_attention_mask=np.ones((b, k + 1), int))  # fmt: skip
        mods = {"rgb@224": rgb, target: semseg_in, "caption": cap}
        step = ref.ml4m_logits(fm21["state"], fm21["config"], mods, 2 * n, k + 1)["caption"]
        step = step[:, -1].copy()
        step[:, [0, start]] = -np.inf  # mmjax never samples [PAD] or the start sentinel
        seq = np.concatenate([seq, step.argmax(-1)[:, None]], 1)
    np.testing.assert_array_equal(np.asarray(out["caption"])[:, :4], seq[:, 1:])


def _trainer_for_bundle(meta, bundle):
    """A 4M trainer whose model and registry are the bundle's, starting from its weights."""
    from mmjax.configs import fourm
    from mmjax.train.registry import get_trainer

    config = fourm.get_config("quick")
    config.modalities = meta["modalities"]
    config.model.update({k: v for k, v in meta["model"].items() if k != "sharding_rules"})
    config.model_init = str(bundle)
    config.masking.input_budget = config.masking.target_budget = 8
    config.data.batch_size = 8
    config.mesh.data = 1
    return get_trainer(config)(config, devices=jax.devices()[:1])


def test_fine_tuning_starts_from_a_converted_bundle(fm21, fm4):
    """`model_init`: the 4M trainer's first state holds the converted weights (and their EMA);
    a bundle of another model is refused naming what differs. (A 4M-7 layout: the trainer
    has no data path for 4M-21's T5 caption embeddings.)"""
    trainer = _trainer_for_bundle(fm4["meta"], fm4["bundle"])
    spec = trainer._batch_spec()
    batch = jax.device_put(
        jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), spec), trainer.batch_sharding
    )
    state = trainer.init_state(batch)
    want = jax.tree.leaves(fm4["variables"]["params"])
    for got, ref_leaf in zip(jax.tree.leaves(state.params), want, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref_leaf))
    if state.ema_params is not None:
        for got, ref_leaf in zip(jax.tree.leaves(state.ema_params), want, strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(ref_leaf))
    trainer.config.model_init = str(fm21["bundle"])  # 4M-21 layout: other modalities
    with pytest.raises(ValueError, match=r"model_init .*modalities"):
        trainer.init_state(batch)
