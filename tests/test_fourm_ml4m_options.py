"""The FourM options that express ml-4m checkpoints, each against numpy maths written from
ml-4m's rules (fourm/models/fm_utils.py, encoder_embeddings.py, decoder_embeddings.py), and
with its default unchanged."""

import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.fourm.blocks import DecoderBlock, EncoderBlock
from mmjax.fourm.embeddings import Embeddings
from mmjax.fourm.modalities import ModalitySpec, build_registry
from mmjax.fourm.model import FourM, example_batch
from mmjax.nn import KVAttention, sincos_2d

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _np_sincos(pos, dim):
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2) / (dim // 2))
    a = np.asarray(pos, np.float64)[:, None] * omega
    return np.concatenate([np.sin(a), np.cos(a)], axis=1)


def _ln(x, scale, bias=None):
    mu = x.mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * scale
    return y if bias is None else y + bias


def _params(variables):
    return jax.tree.map(np.array, nn.unbox(variables["params"]))


def test_sincos_2d_ml4m_layout_on_non_square_grids():
    h, w, d = 2, 3, 8
    n = np.arange(h * w)
    ml4m = np.concatenate([_np_sincos(n // h, d // 2), _np_sincos(n % h, d // 2)], axis=1)
    np.testing.assert_allclose(sincos_2d(h, w, d, layout="ml4m"), ml4m, atol=1e-6)
    row_major = np.concatenate([_np_sincos(n // w, d // 2), _np_sincos(n % w, d // 2)], axis=1)
    np.testing.assert_allclose(sincos_2d(h, w, d), row_major, atol=1e-6)
    assert not np.allclose(sincos_2d(h, w, d), sincos_2d(h, w, d, layout="ml4m"))
    np.testing.assert_array_equal(sincos_2d(3, 3, d), sincos_2d(3, 3, d, layout="ml4m"))
    with pytest.raises(ValueError, match="layout"):
        sincos_2d(2, 2, 8, layout="col_major")


def test_swiglu_width_rule():
    """mlp_multiple_of=1 is ml-4m's int(2 * int(d * ratio) / 3); the default rounds up."""
    reg = build_registry({"a": dict(kind="image_tokens", vocab_size=4, grid=(1, 1))})
    for d in (32, 48, 384, 768, 1024, 2048):
        ml4m = int(2 * int(d * 4.0) / 3)
        assert FourM(reg, width=d, mlp_multiple_of=1).hidden_dim == ml4m
        assert FourM(reg, width=d).hidden_dim == -(-ml4m // 128) * 128
    assert FourM(reg, width=48, mlp_type="gelu").hidden_dim == 192


def test_attention_bias_options():
    kw = dict(num_heads=2, head_dim=4, out_dim=8, qk_norm=True)
    default = jax.eval_shape(
        KVAttention(use_bias=False, **kw).init, jax.random.key(0), jnp.zeros((1, 3, 8))
    )
    flat = flax.traverse_util.flatten_dict(nn.unbox(default["params"]))
    assert not any(k[-1] == "bias" for k in flat)
    mod = KVAttention(use_bias=False, qkv_bias=True, out_bias=False, norm_bias=True, **kw)
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    variables = jax.jit(mod.init)(jax.random.key(1), x)
    variables = jax.tree.map(lambda a: a + 0.3, variables)  # non-trivial biases and scales
    p = _params(variables)
    assert "bias" not in p["out"] and "bias" in p["query"] and "bias" in p["query_norm"]
    got = np.asarray(jax.jit(mod.apply)(variables, x))
    q = _ln(np.einsum("btd,dnh->btnh", x, p["query"]["kernel"]) + p["query"]["bias"],
            p["query_norm"]["scale"], p["query_norm"]["bias"])  # fmt: skip
    k = _ln(np.einsum("btd,dnh->btnh", x, p["key"]["kernel"]) + p["key"]["bias"],
            p["key_norm"]["scale"], p["key_norm"]["bias"])  # fmt: skip
    v = np.einsum("btd,dnh->btnh", x, p["value"]["kernel"]) + p["value"]["bias"]
    s = np.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(4)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    want = np.einsum("bnts,bsnh,nhd->btd", a, v, p["out"]["kernel"])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_gelu_block_with_biases():
    """ml-4m's GELU Block: x + proj(attn(LN1 x)); x + fc2(gelu(fc1(LN2 x))), biases everywhere."""
    blk = EncoderBlock(width=8, num_heads=2, mlp_dim=12, mlp_type="gelu", qkv_bias=True,
                       proj_bias=True, mlp_bias=True, norm_bias=True)  # fmt: skip
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    mask = np.ones((2, 1, 1, 3), bool)
    variables = jax.jit(blk.init)(jax.random.key(0), x, mask)
    variables = jax.tree.map(lambda a: a + 0.2, variables)
    p = _params(variables)
    got = np.asarray(jax.jit(blk.apply)(variables, x, mask))
    h = _ln(x, p["norm_attn"]["scale"], p["norm_attn"]["bias"])
    at = p["attn"]
    q, k, v = (np.einsum("btd,dnh->btnh", h, at[n]["kernel"]) + at[n]["bias"]
               for n in ("query", "key", "value"))  # fmt: skip
    s = np.einsum("btnh,bsnh->bnts", q, k) / 2.0
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    x1 = x + np.einsum("bnts,bsnh,nhd->btd", a, v, at["out"]["kernel"]) + at["out"]["bias"]
    h = _ln(x1, p["norm_mlp"]["scale"], p["norm_mlp"]["bias"])
    f1 = h @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]
    gelu = 0.5 * f1 * (1 + np.vectorize(math.erf)(f1 / math.sqrt(2)))
    want = x1 + gelu @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("mode", [pytest.param("zero", marks=pytest.mark.slow), "uniform"])
def test_empty_context(mode):
    """No valid context token: "zero" adds nothing, "uniform" (ml-4m) adds out(mean_s v_s)."""
    blk = DecoderBlock(width=8, num_heads=2, mlp_dim=12, empty_context=mode)
    rng = np.random.default_rng(2)
    x, ctx = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 5, 8))
    x, ctx = x.astype(np.float32), ctx.astype(np.float32)
    smask, cmask = np.ones((2, 1, 3, 3), bool), np.zeros((2, 1, 1, 5), bool)
    variables = jax.jit(blk.init)(jax.random.key(0), x, smask, ctx, cmask)
    p = _params(variables)
    p["mlp"]["down"]["kernel"][:] = 0.0  # isolate the cross-attention's contribution

    def cross(mod, x, ctx, cmask):
        return mod._cross_and_mlp(x, *mod.cross_kv(ctx), cmask)

    got = np.asarray(jax.jit(lambda v: blk.apply(v, x, ctx, cmask, method=cross))({"params": p}))
    if mode == "zero":
        np.testing.assert_allclose(got, x, atol=1e-6)
        return
    c = _ln(ctx, p["norm_context"]["scale"])
    v = np.einsum("bsd,dnh->bsnh", c, p["cross_attn"]["value"]["kernel"]).mean(1)  # [B, N, H]
    add = np.einsum("bnh,nhd->bd", v, p["cross_attn"]["out"]["kernel"])[:, None]
    np.testing.assert_allclose(got, x + add, atol=1e-5)


def _registry():
    return build_registry({
        "px": dict(kind="pixels", grid=(2, 2), patch_size=2, channels=3),
        "seq": dict(kind="sequence", vocab_size=7, max_length=5),
        "glob": dict(kind="image_tokens", vocab_size=6, grid=(2, 2), learned_positions=True),
        "emb": dict(kind="sequence_embedding", max_length=4, embed_dim=5),
    })  # fmt: skip


def test_embedding_options_match_ml4m_rules():
    """pixel_norm="imagenet" without patch bias, decoder_tables, learned positions and the
    sequence_embedding kind, each token checked against numpy."""
    reg, d = _registry(), 8
    emb = Embeddings(reg, d, decoder_tables=True, pixel_norm="imagenet", patch_bias=False,
                     sincos_layout="ml4m")  # fmt: skip
    rng = np.random.default_rng(3)
    ids = {n: reg.index(n) for n in reg.names}
    pixels = rng.random((1, 4, 4, 3)).astype(np.float32)
    vectors = rng.standard_normal((1, 4, 5)).astype(np.float32)
    batch = {
        "enc_tokens": np.array([[0, 3, 5, 2]]),
        "enc_modality": np.array([[ids["px"], ids["seq"], ids["glob"], ids["emb"]]]),
        "enc_positions": np.array([[3, 1, 2, 0]]),
        "enc_mask": np.ones((1, 4), bool),
        "pixels_px": pixels,
        "embeddings_emb": vectors,
    }
    variables = jax.jit(lambda k, b: emb.init(k, b, method=Embeddings.encoder))(
        jax.random.key(0), batch
    )
    p = _params(variables)
    assert "bias" not in p["patch_embed_px"]
    x, _ = jax.jit(lambda v, b: emb.apply(v, b, method=Embeddings.encoder))(variables, batch)
    x = np.asarray(x)[0]
    patch = ((pixels[0] - MEAN) / STD)[2:4, 2:4].reshape(-1)  # patch 3: row 1, col 1
    want_px = patch @ p["patch_embed_px"]["kernel"] + sincos_2d(2, 2, d, layout="ml4m")[3]
    np.testing.assert_allclose(x[0], want_px + p["modality_emb"][ids["px"]], atol=1e-5)
    want_seq = p["tok_emb_seq"][3] + _np_sincos([1], d)[0] + p["modality_emb"][ids["seq"]]
    np.testing.assert_allclose(x[1], want_seq, atol=1e-5)
    want_glob = p["tok_emb_glob"][5] + p["pos_emb_glob"][2] + p["modality_emb"][ids["glob"]]
    np.testing.assert_allclose(x[2], want_glob, atol=1e-5)
    proj = p["sequence_proj_emb"]
    want_emb = vectors[0, 2] @ proj["kernel"] + proj["bias"] + _np_sincos([0], d)[0]
    np.testing.assert_allclose(x[3], want_emb + p["modality_emb"][ids["emb"]], atol=1e-5)
    decode = jax.jit(lambda v, *a: emb.apply(v, *a, method=Embeddings.decoder))
    dec = decode(variables, np.array([[4, 0]]), np.array([[ids["seq"], ids["glob"]]]),
                 np.array([[2, 1]]))  # fmt: skip
    dec = np.asarray(dec)[0]
    want = p["dec_tok_emb_seq"][4] + _np_sincos([2], d)[0] + p["dec_modality_emb"][ids["seq"]]
    np.testing.assert_allclose(dec[0], want, atol=1e-5)
    want = p["mask_token"] + p["dec_pos_emb_glob"][1] + p["dec_modality_emb"][ids["glob"]]
    np.testing.assert_allclose(dec[1], want, atol=1e-5)


def test_embedding_defaults_unchanged():
    reg = build_registry({"px": dict(kind="pixels", grid=(1, 1), patch_size=2, channels=3),
                          "t": dict(kind="image_tokens", vocab_size=4, grid=(1, 1))})  # fmt: skip
    emb = Embeddings(reg, 8)
    zeros = np.zeros((1, 1), int)
    batch = {"enc_tokens": zeros, "enc_modality": zeros, "enc_positions": zeros,
             "pixels_px": np.full((1, 2, 2, 3), 0.75)}  # fmt: skip
    variables = jax.jit(lambda k, b: emb.init(k, b, method=Embeddings.encoder))(
        jax.random.key(0), batch
    )
    p = _params(variables)
    assert set(p) == {"tok_emb_t", "patch_embed_px", "modality_emb", "mask_token"}
    x, _ = jax.jit(lambda v, b: emb.apply(v, b, method=Embeddings.encoder))(variables, batch)
    k = p["patch_embed_px"]
    want = np.full(12, 0.5) @ k["kernel"] + k["bias"] + sincos_2d(1, 1, 8)[0]
    np.testing.assert_allclose(np.asarray(x)[0, 0], want + p["modality_emb"][0], atol=1e-5)


def test_register_tokens_and_context_bias():
    """With no encoder block, register rows of the context are proj(LN(register)) + bias."""
    reg = build_registry({"t": dict(kind="image_tokens", vocab_size=4, grid=(2, 2))})
    model = FourM(reg, width=8, encoder_depth=0, decoder_depth=1, num_heads=2,
                  num_register_tokens=2, context_proj_bias=True)  # fmt: skip
    batch = example_batch(reg, batch_size=1, enc_len=3, dec_len=2)
    variables = jax.jit(model.init)(jax.random.key(0), batch)
    variables = jax.tree.map(lambda a: a + 0.1, variables)
    p = _params(variables)
    ctx, mask = jax.jit(lambda v, b: model.apply(v, b, method=FourM.encode))(variables, batch)
    assert np.asarray(mask).tolist() == [[True] * 5]
    want = _ln(p["register_tokens"], p["encoder_norm"]["scale"])
    want = want @ p["context_proj"]["kernel"] + p["context_proj"]["bias"]
    np.testing.assert_allclose(np.asarray(ctx)[0, :2], want, atol=1e-5)
    plain = FourM(reg, width=8, encoder_depth=0, decoder_depth=1, num_heads=2)
    p0 = jax.eval_shape(plain.init, jax.random.key(0), batch)["params"]
    assert "register_tokens" not in p0 and "bias" not in p0["context_proj"]


def test_sequence_embedding_spec_is_checked():
    with pytest.raises(ValueError, match="embed_dim"):
        ModalitySpec("t5", "sequence_embedding", max_length=4)
    spec = ModalitySpec("t5", "sequence_embedding", max_length=4, embed_dim=3)
    assert not spec.is_target and spec.num_tokens == 4
    model = FourM(build_registry({"t5": dict(kind="sequence_embedding", max_length=4,
                                             embed_dim=3),
                                  "t": dict(kind="image_tokens", vocab_size=4, grid=(1, 1))}),
                  width=8, encoder_depth=1, decoder_depth=1, num_heads=2)  # fmt: skip
    batch = example_batch(model.registry, batch_size=1, enc_len=2, dec_len=1)
    batch["embeddings_t5"] = np.zeros((1, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"embeddings_t5 must have shape \(1, 4, 3\)"):
        model.init(jax.random.key(0), batch)
