"""The flexible-length 1D tokenizer (model type "flex1d"): causal registers make token prefixes
independent of later registers, nested dropout keeps prefixes drawn from its distribution and
fills the rest with the mask embedding, decode takes every prefix, and the tokenizer trainer
trains one and exports a bundle that encodes to any length."""

import functools
import json
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mmjax.configs import load
from mmjax.data import ScenesSource
from mmjax.eval import prefixes, reconstruction
from mmjax.tokenizers import (
    NESTED_DROPOUT,
    Flex1DAutoencoder,
    Tokenizer,
    build_autoencoder,
    kept_length_support,
)
from mmjax.train import tokenizer_trainer
from mmjax.train.tokenizer_trainer import TokenizerTrainer

K = 8  # registers, i.e. the most tokens per image
MODEL_2D = {"type": "conv", "size": "tiny", "channels": 8, "channel_mult": [1, 1, 2]}
FSQ = {"type": "fsq", "levels": (8, 5, 5, 5)}


def tiny_model(causal=True, keep="pow2") -> Flex1DAutoencoder:
    model = dict(
        type="flex1d", image_size=16, patch_size=4, width=32, depth=1, heads=2, mlp_dim=64,
        z_dim=8, num_registers=K, causal_registers=causal, keep=keep,
    )  # fmt: skip
    return build_autoencoder(model, FSQ, "rgb")


def images(n=4, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 16, 16, 3)).astype(np.float32)


class Tiny:
    """A tiny model, its variables for `images()`, and its methods jitted (k: num_tokens,
    static; variables an argument, so perturbed copies reuse the compiled code)."""

    def __init__(self, causal: bool, keep: str):
        m = self.model = tiny_model(causal, keep)
        self.x = images()
        self.v = nn.meta.unbox(jax.jit(m.init)(jax.random.key(0), self.x))
        static = {"static_argnums": 2}
        self.encode = jax.jit(
            lambda v, x, k: m.apply(v, x, num_tokens=k, method="encode"), **static
        )
        self.latents = jax.jit(lambda v, x, k: m.apply(v, x, k, method=_encoder), **static)
        self.forward = jax.jit(lambda v, x, k: m.apply(v, x, num_tokens=k), **static)
        self.decode = jax.jit(lambda v, t: m.apply(v, t, method="decode"))
        self.decode_codes = jax.jit(lambda v, c, n: m.apply(v, c, n, method="decode_codes"))


def _encoder(module, x, k):
    return module.encoder(x, k)


@functools.cache
def tiny(causal=True, keep="pow2") -> Tiny:
    return Tiny(causal, keep)


def with_param(variables, path, change):
    """The variables with the parameter at `path` (e.g. ("encoder", "registers")) replaced by
    change(value)."""
    params = jax.tree.map(lambda a: a, variables["params"])  # a copy of the nested dicts
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = change(node[path[-1]])
    return {**variables, "params": params}


def perturb_registers_after(variables, k):
    """The encoder's [K, width] register table moved a lot at rows k.. only."""
    noise = np.random.default_rng(1).normal(size=(K - k, 32)).astype(np.float32)
    return with_param(variables, ("encoder", "registers"), lambda t: t.at[k:].add(3.0 * noise))


def test_causal_prefixes_do_not_depend_on_later_registers():
    t = tiny(causal=True)
    full = np.asarray(t.encode(t.v, t.x, K))
    assert full.shape == (4, K) and full.dtype == np.int32
    z_full = np.asarray(t.latents(t.v, t.x, K))
    for k in (1, 3):
        part = np.asarray(t.encode(t.v, t.x, k))  # encoded with k registers only
        np.testing.assert_array_equal(part, full[:, :k])
    np.testing.assert_allclose(t.latents(t.v, t.x, 3), z_full[:, :3], atol=1e-5)
    k = 3
    moved = perturb_registers_after(t.v, k)
    z_moved = np.asarray(t.latents(moved, t.x, K))
    np.testing.assert_array_equal(z_moved[:, :k], z_full[:, :k])
    assert np.abs(z_moved[:, k:] - z_full[:, k:]).min() > 1e-3  # the perturbation is real
    tokens = np.asarray(t.encode(moved, t.x, K))
    np.testing.assert_array_equal(tokens[:, :k], full[:, :k])
    assert (tokens[:, k:] != full[:, k:]).any()


def test_without_causal_registers_prefixes_depend_on_later_registers():
    t = tiny(causal=False)
    full = np.asarray(t.encode(t.v, t.x, K))
    # all K registers run, the first k are kept
    np.testing.assert_array_equal(np.asarray(t.encode(t.v, t.x, 3)), full[:, :3])
    k = 3
    moved = perturb_registers_after(t.v, k)
    z_diff = np.asarray(t.latents(moved, t.x, K) - t.latents(t.v, t.x, K))[:, :k]
    assert np.abs(z_diff).min() > 1e-4  # every early latent moves
    tokens = np.asarray(t.encode(moved, t.x, K))
    assert (tokens[:, :k] != full[:, :k]).any()


def test_kept_length_supports():
    np.testing.assert_array_equal(kept_length_support(32, "pow2"), [1, 2, 4, 8, 16, 32])
    np.testing.assert_array_equal(kept_length_support(6, "pow2"), [1, 2, 4, 6])  # K itself too
    np.testing.assert_array_equal(kept_length_support(5, "uniform"), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(kept_length_support(5, "none"), [5])
    with pytest.raises(ValueError, match="keep must be one of"):
        kept_length_support(5, "geometric")


@pytest.mark.parametrize("keep", ["pow2", "uniform"])
def test_nested_dropout_lengths_follow_the_configured_distribution(keep):
    t = tiny(keep=keep)
    n = 2048
    x = np.tile(t.x[:1], (n, 1, 1, 1))

    @jax.jit
    def kept(v, key):
        _, state = t.model.apply(
            v, x, train=True, rngs={NESTED_DROPOUT: key}, mutable=["intermediates"]
        )
        return state["intermediates"]["num_kept"][0]

    draws = np.asarray(kept(t.v, jax.random.key(3)))
    support = {"pow2": [1, 2, 4, 8], "uniform": list(range(1, K + 1))}[keep]
    values, counts = np.unique(draws, return_counts=True)
    np.testing.assert_array_equal(values, support)
    # each length has probability 1/|support|; 5 binomial standard deviations of slack
    p = 1 / len(support)
    np.testing.assert_allclose(counts / n, p, atol=5 * np.sqrt(p * (1 - p) / n))
    assert (np.asarray(kept(t.v, jax.random.key(4))) != draws).any()  # a new key, new draws
    # evaluation (and a fixed num_tokens) keeps every example's first k
    _, state = t.model.apply(t.v, t.x[:2], num_tokens=5, mutable=["intermediates"])
    np.testing.assert_array_equal(state["intermediates"]["num_kept"][0], [5, 5])
    with pytest.raises(ValueError, match="needs a 'nested_dropout' rng"):
        t.model.apply(t.v, t.x[:2], train=True)


def test_dropped_positions_reach_the_decoder_as_the_mask_embedding():
    t = tiny()
    rng = np.random.default_rng(2)
    codes = rng.uniform(-1, 1, (4, K, 8)).astype(np.float32)
    num_kept = np.asarray([1, 3, K, 5])
    y = np.asarray(t.decode_codes(t.v, codes, num_kept))
    dropped = np.arange(K)[None, :, None] >= num_kept[:, None, None]
    other = np.where(dropped, rng.uniform(-1, 1, codes.shape), codes).astype(np.float32)
    np.testing.assert_array_equal(t.decode_codes(t.v, other, num_kept), y)  # prefix only
    first_moved = codes.copy()
    first_moved[:, 0] += 0.5
    change = np.abs(t.decode_codes(t.v, first_moved, num_kept) - y).reshape(4, -1).max(1)
    assert (change > 1e-4).all()
    # the dropped positions read the mask embedding: changing it changes exactly the
    # examples that dropped something
    noise = rng.normal(size=32).astype(np.float32)
    moved = with_param(t.v, ("decoder", "mask_token"), lambda m: m + noise)
    change = np.abs(t.decode_codes(moved, codes, num_kept) - y).reshape(4, -1).max(1)
    np.testing.assert_array_equal(change > 1e-4, num_kept < K)
    # a training forward pass is decode_codes of its quantized codes at the drawn lengths
    (y_train, q), state = t.model.apply(
        t.v, t.x, train=True, rngs={NESTED_DROPOUT: jax.random.key(5)}, mutable=["intermediates"]
    )
    drawn = state["intermediates"]["num_kept"][0]
    np.testing.assert_allclose(y_train, t.decode_codes(t.v, q.quantized, drawn), atol=1e-6)


def test_decode_takes_every_prefix_and_matches_the_forward_pass():
    t = tiny()
    tokens = t.encode(t.v, t.x, K)
    y_fwd, q = t.forward(t.v, t.x, K)  # the eval forward pass
    np.testing.assert_array_equal(q.indices, tokens)
    np.testing.assert_allclose(t.decode(t.v, tokens), y_fwd, atol=1e-5)
    codes = t.model.apply(t.v, tokens, method=lambda m, i: m.quantizer.decode_indices(i))
    outputs = []
    for k in range(1, K + 1):
        y_k = np.asarray(t.decode(t.v, tokens[:, :k]))
        # the same as all K codes with the last K - k dropped
        np.testing.assert_allclose(y_k, t.decode_codes(t.v, codes, np.full(4, k)), atol=1e-5)
        outputs.append(y_k)
    assert all(np.abs(a - outputs[-1]).max() > 1e-4 for a in outputs[:-1])  # prefixes matter
    y_3, _ = t.forward(t.v, t.x, 3)  # the eval forward pass from the first 3 tokens
    np.testing.assert_allclose(outputs[2], y_3, atol=1e-5)


def test_bad_lengths_and_configs_are_named():
    t = tiny()
    model, v, x = t.model, t.v, t.x[:2]
    for bad in (0, K + 1, -2):
        with pytest.raises(ValueError, match=rf"num_tokens={bad} is outside 1\.\.{K}"):
            model.apply(v, x, num_tokens=bad, method="encode")
    with pytest.raises(ValueError, match=rf"num_tokens must be an int in 1\.\.{K}, got 2\.5"):
        model.apply(v, x, num_tokens=2.5, method="encode")
    too_long = jnp.zeros((2, K + 1), jnp.int32)
    with pytest.raises(ValueError, match=rf"{K + 1} tokens per image .* outside 1\.\.{K}"):
        model.apply(v, too_long, method="decode")
    with pytest.raises(ValueError, match="image_size 16"):
        model.apply(v, np.zeros((1, 32, 32, 3), np.float32), method="encode")
    base = dict(type="flex1d", image_size=16, patch_size=4, width=32, heads=2)
    with pytest.raises(ValueError, match=r"needs model\.image_size"):
        build_autoencoder({k: v for k, v in base.items() if k != "image_size"}, FSQ, "rgb")
    with pytest.raises(ValueError, match=r"keep must be one of .* got 'all'"):
        build_autoencoder({**base, "keep": "all"}, FSQ, "rgb")
    with pytest.raises(ValueError, match="image_size 18 must be a positive multiple"):
        build_autoencoder({**base, "image_size": 18}, FSQ, "rgb")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['pos_emb'\]"):
        build_autoencoder({**base, "pos_emb": "learned"}, FSQ, "rgb")
    msrvq = {"type": "msrvq", "base": {"type": "vq", "codebook_size": 8}}
    with pytest.raises(ValueError, match="per-token quantizer"):
        build_autoencoder(base, msrvq, "rgb")


def test_training_lowers_the_loss_and_exports_a_bundle(tmp_path, untrained_tokenizers, capsys):
    c = load("tokenizer_1d", "quick")
    c.data.resolution = 16  # model.image_size follows
    c.model.update(dict(width=32, depth=1, heads=2, mlp_dim=64, z_dim=8, num_registers=K))
    c.total_steps, c.log_every = 30, 3
    c.eval.update(every=30, num_images=4, usage_images=16)
    c.checkpoint.update(every=30, async_save=False)
    c.data.batch_size = 8
    c.optimizer.learning_rate = 3e-3
    assert c.model.image_size == 16
    final = TokenizerTrainer(c, str(tmp_path)).run()
    with open(tmp_path / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert len(losses) == 10 and np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses

    tok = Tokenizer.load(str(tmp_path))
    assert tok.grid_shape == (K,) and tok.max_tokens == K and tok.codebook_size == 1000
    val = TokenizerTrainer(c, str(tmp_path / "unused")).val_raw  # rgb in [0, 1]
    tokens = np.asarray(tok.encode(val))
    assert tokens.shape == (len(val), K) and tokens.dtype == np.int32
    assert tokens.min() >= 0 and tokens.max() < 1000
    short = np.asarray(tok.encode(val, num_tokens=3))
    np.testing.assert_array_equal(short, tokens[:, :3])
    # the bundle's full-length round trip is what the trainer evaluated
    decoded = np.asarray(tok.decode(tokens))
    psnr = tokenizer_trainer.reconstruction_metrics("rgb", val, decoded)["psnr"]
    np.testing.assert_allclose(final["eval/psnr"], psnr, rtol=1e-4)
    for k in (1, 5):
        assert np.asarray(tok.decode(tokens[:, :k])).shape == val.shape
    with pytest.raises(ValueError, match=rf"num_tokens=0 is outside 1\.\.{K}"):
        tok.encode(val, num_tokens=0)

    check_quality_clis(str(tmp_path), tok, untrained_tokenizers, capsys)


def np_psnr(images, recon) -> float:
    mse = np.mean((np.asarray(recon, np.float64) - images) ** 2, axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(1 / mse)))


def check_quality_clis(bundle, tok, untrained_tokenizers, capsys):
    """mmjax.eval.reconstruction --num-tokens and mmjax.eval.prefixes on a trained 1D bundle
    (16 px, K tokens) and an untrained 2D one (4 x 4 grid): numpy PSNR of the round trips."""
    scenes = np.stack([ScenesSource("validation", 16, 6)[i]["rgb"] for i in range(6)])
    args = ["--tokenizer", bundle, "--num", "6"]
    out = reconstruction.main([*args, "--num-tokens", "3", "--no-progress"])
    assert out["num_tokens"] == 3
    recon = tok.decode(tok.encode(scenes, num_tokens=3))
    assert out["psnr"] == pytest.approx(np_psnr(scenes, recon), rel=1e-5)

    two_d = untrained_tokenizers(("rgb",), MODEL_2D, {"type": "fsq", "levels": [5, 5]}, 16)["rgb"]
    ref = Tokenizer.load(two_d)
    png, js = os.path.join(bundle, "prefixes.png"), Path(bundle) / "prefixes.json"
    args += ["--reference", two_d, "--out", png, "--json", str(js), "--show", "2"]
    out = prefixes.main(args)
    assert json.loads(js.read_text()) == out
    assert [r["num_tokens"] for r in out["prefixes"]] == [1, 2, 4, K]
    for row in out["prefixes"]:
        recon = tok.decode(tok.encode(scenes, num_tokens=row["num_tokens"]))
        assert row["psnr"] == pytest.approx(np_psnr(scenes, recon), rel=1e-5)
    (r2d,) = out["references"]
    assert r2d["num_tokens"] == 16 and r2d["tokenizer"] == two_d
    assert r2d["psnr"] == pytest.approx(np_psnr(scenes, ref.decode(ref.encode(scenes))), rel=1e-5)
    with Image.open(png) as im:  # 2 scenes x (image, 4 prefixes, the 2D reference) at 3x
        assert im.width >= 6 * 48 and 2 * 48 <= im.height < 6 * 48
    with pytest.raises(SystemExit):
        prefixes.main(["--tokenizer", two_d, "--num", "2"])
    assert "is a 2D tokenizer" in capsys.readouterr().err
    with pytest.raises(ValueError, match=rf"k in 1\.\.{K}, got k={K + 1}"):
        tok.decode(np.zeros((1, K + 1), np.int32))
