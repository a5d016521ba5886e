"""Residual (RVQ) image tokens in 4M (`depth` > 1, flattened depth-first): the registry
entry, embeddings against a numpy construction, masking that round-trips to the [h, w, depth]
tokens, pre-tokenized records and manifest, generation that decodes through an RVQ bundle
with coarse levels first on request, and depth=1 numbers equal to the code before depth."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data import ScenesSource
from mmjax.data.pretokenized import PretokenizedSource
from mmjax.fourm import FourMMasking, build_fourm, build_registry, example_batch
from mmjax.fourm.embeddings import Embeddings
from mmjax.fourm.generation.generate import GenerationStep, generate
from mmjax.fourm.modalities import ModalitySpec, fourm7_modalities
from mmjax.pretokenize import pretokenize, registry_config_from_manifest

H, W, DEPTH, V = 2, 3, 3, 16
REG = build_registry({
    "tok_r": dict(kind="image_tokens", vocab_size=V, grid=(H, W), depth=DEPTH),
    "cap": dict(kind="sequence", vocab_size=30, max_length=8),
})  # fmt: skip
SENTINELS, EOS = list(range(4, 12)), 1
R = 32  # tokenizer resolution: a 4 x 4 grid
MODEL = {"type": "conv", "size": "tiny", "channels": 8, "channel_mult": [1, 1, 2, 2]}
QUANT = {"type": "rvq", "depth": 2, "base": {"type": "vq", "codebook_size": 16}}
# the code before residual tokens: depth=1 must give its numbers exactly
BEFORE_DEPTH = "624c4a4"
ROOT = Path(__file__).resolve().parent.parent


def test_registry_entry_and_bad_depths():
    spec = REG["tok_r"]
    assert spec.num_tokens == H * W * DEPTH and spec.token_shape == (H, W, DEPTH)
    x = np.arange(2 * H * W * DEPTH).reshape(2, H, W, DEPTH)
    np.testing.assert_array_equal(spec.flatten_tokens(x, True, "t"), x.reshape(2, -1))
    with pytest.raises(ValueError, match=r"must have shape \[B, 18\] or \[B, 2, 3, 3\]"):
        spec.flatten_tokens(x[..., :2], True, "t")
    with pytest.raises(ValueError, match="depth must be an int >= 1"):
        ModalitySpec("t", "image_tokens", vocab_size=V, grid=(2, 2), depth=0)
    with pytest.raises(ValueError, match="needs kind 'image_tokens'"):
        ModalitySpec("t", "sequence", vocab_size=V, max_length=4, depth=2)
    assert ModalitySpec("t", "image_tokens", vocab_size=V, grid=(2, 2)).token_shape == (2, 2)


def _sincos(p, dim):
    omega = 1.0 / 10000 ** (np.arange(dim // 2) / (dim // 2))
    angles = np.asarray(p, np.float64)[:, None] * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], 1)


def test_embeddings_equal_a_numpy_construction():
    """position + modality of token p of a residual modality = the 2D sin-cos of its cell
    (p // depth) + the depth embedding of its level (p % depth) + the modality embedding."""
    d = 16
    emb = Embeddings(REG, d)
    pos = np.arange(H * W * DEPTH)[None]
    mod = np.full_like(pos, REG.index("tok_r"))
    params = emb.init(jax.random.key(0), mod, pos, method=emb.position_modality)
    params = nn.unbox(params)
    got = np.asarray(emb.apply(params, mod, pos, method=emb.position_modality))[0]
    p = params["params"]
    cell = pos[0] // DEPTH
    rows, cols = cell // W, cell % W
    table = np.concatenate([_sincos(rows, d // 2), _sincos(cols, d // 2)], 1)
    want = (
        table
        + np.asarray(p["depth_emb_tok_r"])[pos[0] % DEPTH]
        + np.asarray(p["modality_emb"])[REG.index("tok_r")]
    )
    np.testing.assert_allclose(got, want, atol=1e-5)
    # decoder targets read the mask token plus the same position
    dec = emb.apply(params, jnp.zeros_like(pos), mod, pos, method=emb.decoder)
    np.testing.assert_allclose(np.asarray(dec)[0], want + np.asarray(p["mask_token"]), atol=1e-5)


def test_masking_round_trips_to_the_token_grid():
    rng = np.random.default_rng(0)
    n = H * W * DEPTH
    masking = FourMMasking(REG, 10, n - 10 + 6, "all_to_all", SENTINELS, EOS)
    for _ in range(20):
        x = rng.integers(0, V, (H, W, DEPTH))
        out = masking({"tok_r": x, "cap": np.array([20, 21, 22, 23, 24])}, rng)
        back = np.full((H, W, DEPTH), -1)
        for side, tok in (("enc", "enc_tokens"), ("dec", "dec_target_tokens")):
            sel = out[f"{side}_mask"] & (out[f"{side}_modality"] == REG.index("tok_r"))
            cell, level = np.divmod(out[f"{side}_positions"][sel], DEPTH)
            assert (back[cell // W, cell % W, level] == -1).all()  # each token once
            back[cell // W, cell % W, level] = out[tok][sel]
        seen = back >= 0
        np.testing.assert_array_equal(back[seen], x[seen])
        assert seen.sum() == np.sum(
            out["enc_mask"] & (out["enc_modality"] == REG.index("tok_r"))
        ) + np.sum(out["dec_mask"] & (out["dec_modality"] == REG.index("tok_r")))
    only = [{"input_alphas": {"tok_r": 1.0}, "target_alphas": {"tok_r": 1.0}}]
    full = FourMMasking(REG, 9, 9, only, SENTINELS, EOS)
    x = rng.integers(0, V, (H, W, DEPTH))
    out = full({"tok_r": x}, rng)  # every token in or out: the whole grid comes back
    pos = np.concatenate([out["enc_positions"], out["dec_positions"]])
    tok = np.concatenate([out["enc_tokens"], out["dec_target_tokens"]])
    back = np.zeros(n, np.int64)
    back[pos] = tok
    np.testing.assert_array_equal(back.reshape(H, W, DEPTH), x)
    with pytest.raises(ValueError, match=r"image tokens must have shape"):
        full({"tok_r": x[..., :2]}, rng)


@pytest.fixture(scope="module")
def rvq_data(tmp_path_factory, untrained_tokenizers):
    from mmjax.tokenizers import Tokenizer

    dirs = untrained_tokenizers(("rgb",), MODEL, QUANT, R)
    out = str(tmp_path_factory.mktemp("pretok_rvq") / "out")
    pretokenize(ScenesSource("train", R, 6), dirs, out, resolution=R, batch_size=3,
                text_examples=50, text_vocab_size=600)  # fmt: skip
    return dict(tok=Tokenizer.load(dirs["rgb"]), dir=dirs["rgb"], out=out)


def test_records_and_manifest_keep_the_depth_axis(rvq_data):
    from mmjax.data import scenes

    source = PretokenizedSource(rvq_data["out"], ["tok_rgb", "caption"])
    entry = source.manifest["modalities"]["tok_rgb"]
    assert entry["depth"] == 2 and entry["token_shape"] == [4, 4, 2]
    images = np.stack([scenes.generate(i, "train", R)["rgb"] for i in range(2)])
    want = np.asarray(rvq_data["tok"].encode(images))
    np.testing.assert_array_equal(np.stack([source[i]["tok_rgb"] for i in range(2)]), want)
    config = registry_config_from_manifest(source.manifest, ["tok_rgb", "caption"])
    assert config["tok_rgb"]["depth"] == 2
    spec = build_registry(config)["tok_rgb"]
    assert spec.num_tokens == 32 and spec.token_shape == (4, 4, 2)


def _tiny(registry):
    model = build_fourm({"size": "tiny", "width": 32, "num_heads": 2, "encoder_depth": 1,
                         "decoder_depth": 1}, registry)  # fmt: skip
    batch = example_batch(registry, 1, 4, 4)
    return model, nn.unbox(jax.jit(model.init)(jax.random.key(0), batch))


def test_generation_decodes_through_the_rvq_bundle(rvq_data):
    source = PretokenizedSource(rvq_data["out"], ["tok_rgb", "caption"])
    registry = build_registry(registry_config_from_manifest(source.manifest))
    model, variables = _tiny(registry)
    caption = np.stack([source[i]["caption"][:6] for i in range(2)])
    steps = [GenerationStep("tok_rgb", steps=4, temperature=1.0, depth_order="coarse_first")]
    out, hist = generate(model, variables, registry, {"caption": caption}, steps,
                         jax.random.key(3), return_history=True)  # fmt: skip
    tokens = np.asarray(out["tok_rgb"])
    assert tokens.shape == (2, 4, 4, 2) and tokens.dtype == np.int32
    assert tokens.min() >= 0 and tokens.max() < 16
    images = np.asarray(rvq_data["tok"].decode(tokens))
    assert images.shape == (2, R, R, 3) and np.isfinite(images).all()
    # coarse first: no level-1 token is committed while a level-0 token is still unknown
    known = hist["tok_rgb"]["known"].reshape(4, 2, 16, 2)  # [round, B, cell, level]
    level1_started = known[..., 1].any(-1)
    assert (known[..., 0].all(-1) | ~level1_started).all() and known[-1].all()
    assert level1_started[-1].all() and not level1_started[0].any()
    # the result conditions back in as [B, h, w, depth]: redraw the fine level given the
    # coarse one, which stays as it was
    keep = np.zeros((2, 4, 4, 2), bool)
    keep[..., 0] = True
    again = generate(model, variables, registry, {"caption": caption, "tok_rgb": tokens},
                     [GenerationStep("tok_rgb", steps=2)], jax.random.key(4),
                     known_masks={"tok_rgb": keep})  # fmt: skip
    again = np.asarray(again["tok_rgb"])
    np.testing.assert_array_equal(again[..., 0], tokens[..., 0])
    assert (again[..., 1] != tokens[..., 1]).any() and again.max() < 16
    with pytest.raises(ValueError, match="depth_order 'coarse_first' needs residual"):
        generate(model, variables, registry, {"tok_rgb": tokens},
                 [GenerationStep("caption", depth_order="coarse_first")],
                 jax.random.key(0))  # fmt: skip


def _module_before_depth(path: str, name: str):
    """The module at `path` as of BEFORE_DEPTH, loaded beside today's package."""
    try:
        src = subprocess.run(["git", "show", f"{BEFORE_DEPTH}:{path}"], capture_output=True,
                             text=True, check=True, cwd=ROOT).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"this test reads {path} at commit {BEFORE_DEPTH} from the checkout's git "
                    f"history (a full clone), which failed: {e}")  # fmt: skip
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(src, path, "exec"), module.__dict__)
    return module


def test_depth_one_equals_the_code_before_depth(monkeypatch):
    """An existing config (4M-7 of the scenes): the same parameters, logits and masked
    batches as the embeddings and masking of the code before residual tokens."""
    registry = build_registry(fourm7_modalities(image_vocab=64, grid=(4, 4), text_vocab=60,
                                                resolution=32, caption_length=12,
                                                boxes_length=8, metadata_length=6))  # fmt: skip
    old_emb = _module_before_depth("mmjax/fourm/embeddings.py", "_embeddings_before_depth")
    old_mask = _module_before_depth("mmjax/fourm/masking/masker.py", "_masker_before_depth")
    batch = None
    rng = np.random.default_rng(0)
    ex = {f"tok_{m}": rng.integers(0, 64, (4, 4)) for m in ("rgb", "depth", "normals", "semseg")}
    ex |= {"rgb": rng.random((32, 32, 3)).astype(np.float32), "caption": np.arange(20, 27)}
    args = (registry, 40, 30, "all_to_all", list(range(4, 12)), 1)
    for seed in range(3):
        new = FourMMasking(*args)(ex, np.random.default_rng(seed))
        old = old_mask.FourMMasking(*args)(ex, np.random.default_rng(seed))
        assert new.keys() == old.keys()
        for k in new:
            np.testing.assert_array_equal(new[k], old[k], err_msg=k)
        batch = new
    batch = jax.tree.map(lambda a: jnp.asarray(a)[None], batch)
    model, variables = _tiny(registry)
    logits = model.apply(variables, batch)
    import mmjax.fourm.model as fourm_model

    monkeypatch.setattr(fourm_model, "Embeddings", old_emb.Embeddings)
    old_model = build_fourm({"size": "tiny", "width": 32, "num_heads": 2, "encoder_depth": 1,
                             "decoder_depth": 1}, registry)  # fmt: skip
    old_shapes = jax.eval_shape(old_model.init, jax.random.key(0), batch)
    assert jax.tree.structure(nn.unbox(old_shapes)) == jax.tree.structure(variables)
    np.testing.assert_array_equal(np.asarray(old_model.apply(variables, batch)), logits)
