"""The MLP trunk of the 1D tokenizer (`model.trunk="mlp"`): encoder and decoder equal an
independent numpy forward pass of their parameters, prefixes do not depend on later tokens,
dropped positions read the mask embedding, and `configs/tokenizer_1d.py:trunk=mlp` trains and
exports a bundle that encodes to any length."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax.configs import load
from mmjax.tokenizers import Tokenizer, build_autoencoder
from mmjax.train.tokenizer_trainer import TokenizerTrainer

K, S, P = 6, 16, 4  # tokens, image side, patch side
MODEL = dict(type="flex1d", trunk="mlp", image_size=S, patch_size=P, width=8, mlp_dim=24,
             z_dim=5, num_registers=K)  # fmt: skip
FSQ = {"type": "fsq", "levels": (5, 4, 3)}


def np_gelu(x):
    """GELU, tanh approximation (flax's default)."""
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_patches(x, p):
    """[B, H, W, C] -> [B, H/p * W/p, p*p*C], patches row-major, each patch row-major."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def np_dense(x, layer):
    k = np.asarray(layer["kernel"], np.float64)
    out = np.tensordot(x, k.reshape(k.shape[0], -1), axes=1) + np.asarray(layer["bias"]).ravel()
    return out.reshape(*x.shape[:-1], *k.shape[1:])


def np_encoder(params, x):
    flat = np_patches(np.asarray(x, np.float64), P).reshape(len(x), -1)
    return np_dense(np_gelu(np_dense(flat, params["hidden"])), params["to_z"])  # [B, K, z]


def np_decoder(params, codes, kept):
    codes = np.where(kept[..., None], codes, np.asarray(params["mask_token"], np.float64))
    h = np_gelu(np_dense(codes.reshape(len(codes), -1), params["hidden"]))
    h = np_gelu(np_dense(np_dense(h, params["to_patches"]), params["patch_hidden"]))
    out = np_dense(h, params["patch_out"])  # [B, N, p*p*3]
    g = S // P
    out = out.reshape(len(codes), g, g, P, P, 3).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(len(codes), S, S, 3)


@pytest.fixture(scope="module")
def tiny():
    model = build_autoencoder(MODEL, FSQ, "rgb")
    x = np.random.default_rng(0).uniform(-1, 1, (3, S, S, 3)).astype(np.float32)
    variables = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), x))
    return model, variables, x


def test_encoder_and_decoder_equal_a_numpy_forward_pass(tiny):
    model, v, x = tiny
    p = v["params"]
    z = model.apply(v, x, method=lambda m, x: m.encoder(x))
    np.testing.assert_allclose(z, np_encoder(p["encoder"], x), rtol=1e-4, atol=1e-5)
    rng = np.random.default_rng(1)
    codes = rng.uniform(-1, 1, (3, K, 5)).astype(np.float32)
    num_kept = np.asarray([1, 4, K])
    kept = np.arange(K)[None] < num_kept[:, None]
    y = model.apply(v, codes, num_kept, method="decode_codes")
    np.testing.assert_allclose(y, np_decoder(p["decoder"], codes, kept), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"Flex1DMlpDecoder: codes must be \[B, 6, D\]"):
        model.apply(v, codes[:, :4], kept[:, :4], method=lambda m, c, k: m.decoder(c, k))
    # dropped positions read the mask embedding whatever the codes there
    other = np.where(kept[..., None], codes, rng.uniform(-1, 1, codes.shape)).astype(np.float32)
    np.testing.assert_array_equal(model.apply(v, other, num_kept, method="decode_codes"), y)


def test_prefixes_do_not_depend_on_later_tokens(tiny):
    model, v, x = tiny
    full = np.asarray(model.apply(v, x, method="encode"))
    for k in (1, 4):
        np.testing.assert_array_equal(model.apply(v, x, num_tokens=k, method="encode"), full[:, :k])
    # moving the readout of token 4 changes token 4's code and no other
    moved = jax.tree.map(lambda a: a, v)
    kernel = moved["params"]["encoder"]["to_z"]["kernel"]
    moved["params"]["encoder"]["to_z"]["kernel"] = kernel.at[:, 4].multiply(-3.0)
    z, z_moved = (model.apply(w, x, method=lambda m, x: m.encoder(x)) for w in (v, moved))
    changed = np.abs(np.asarray(z_moved) - np.asarray(z)).max(axis=(0, 2)) > 1e-5
    np.testing.assert_array_equal(changed, np.arange(K) == 4)


def test_trunk_is_checked():
    with pytest.raises(ValueError, match=r"trunk must be one of \('vit', 'mlp'\), got 'cnn'"):
        build_autoencoder({**MODEL, "trunk": "cnn"}, FSQ, "rgb")
    # no attention heads: any width builds (the ViT trunk needs width % heads == 0)
    build_autoencoder({**MODEL, "width": 6, "heads": 4}, FSQ, "rgb")
    with pytest.raises(ValueError, match=r"trunk must be one of .*got 'cnn'"):
        load("tokenizer_1d", "trunk=cnn")


def test_training_lowers_the_loss_and_exports_a_bundle(tmp_path):
    c = load("tokenizer_1d", "trunk=mlp,quick")
    assert c.model.trunk == "mlp" and c.model.mlp_dim == 1024
    c.data.resolution = S
    c.model.update(dict(width=16, mlp_dim=256, z_dim=8, num_registers=K, keep="none"))
    c.total_steps, c.log_every = 30, 3
    c.eval.update(every=30, num_images=4, usage_images=16)
    c.checkpoint.update(every=30, async_save=False)
    c.data.batch_size = 8
    c.optimizer.learning_rate = 3e-3
    TokenizerTrainer(c, str(tmp_path)).run()
    with open(tmp_path / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), np.round(losses, 3)
    tok = Tokenizer.load(str(tmp_path))
    val = TokenizerTrainer(c, str(tmp_path / "unused")).val_raw
    tokens = np.asarray(tok.encode(val))
    assert tokens.shape == (len(val), K) and tok.max_tokens == K
    np.testing.assert_array_equal(tok.encode(val, num_tokens=2), tokens[:, :2])
    errors = [np.mean((np.asarray(tok.decode(tokens[:, :k])) - val) ** 2) for k in (1, K)]
    assert np.isfinite(errors).all() and errors[0] != errors[1]  # the prefix length matters
