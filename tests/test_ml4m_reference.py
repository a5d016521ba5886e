"""Tests of the numpy ml-4m 4M reference itself: its state-dict layout against names and shapes
read off ml-4m's module definitions, masking and ordering properties of its forward pass, and
the safetensors layout of its checkpoints."""

import copy
import json
import math

import numpy as np
import pytest

from tests import ml4m_reference as R
from tests import ml4m_reference_layers as L


@pytest.fixture(scope="module", params=["4m", "4m21"])
def setup(request):
    config = R.ml4m_config(request.param)
    state = R.ml4m_state_dict(config, seed=0)
    mod_dict = R.ml4m_example_inputs(config, batch_size=2, seed=1)
    ne, nd = R.ml4m_token_counts(config, mod_dict)
    logits = R.ml4m_logits(state, config, mod_dict, ne, nd)
    return config, state, mod_dict, ne, nd, logits


def _close(a: dict, b: dict, tol=1e-10) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=tol, rtol=0) for k in a)


# Names and shapes written out from fourm/models/{fm,fm_utils,encoder_embeddings,
# decoder_embeddings}.py for the tiny "4m" config (dim 32, GELU Mlp with biases, 4x4 grids,
# sequence sin-cos tables of ml-4m's full 512 rows).
EXPECTED_4M = {
    "mask_token": (1, 1, 32),
    "encoder_embeddings.rgb@224.mod_emb": (1, 1, 32),
    "encoder_embeddings.rgb@224.pos_emb": (1, 16, 32),
    "encoder_embeddings.rgb@224.proj.weight": (32, 3 * 16 * 16),
    "encoder_embeddings.tok_rgb@224.token_emb.weight": (96, 32),
    "encoder_embeddings.caption.pos_emb": (1, 512, 32),
    "encoder_embeddings.caption.token_emb.weight": (100, 32),
    "decoder_embeddings.tok_semseg@224.token_emb.weight": (48, 32),
    "decoder_embeddings.tok_semseg@224.to_logits.weight": (48, 32),
    "decoder_embeddings.det.to_logits.weight": (100, 32),
    "decoder_embeddings.det.pos_emb": (1, 512, 32),
    "encoder.1.norm1.bias": (32,),
    "encoder.1.attn.qkv.weight": (96, 32),
    "encoder.1.attn.qkv.bias": (96,),
    "encoder.1.attn.proj.bias": (32,),
    "encoder.1.mlp.fc1.weight": (128, 32),
    "encoder.1.mlp.fc2.weight": (32, 128),
    "encoder_norm.weight": (32,),
    "decoder_proj_context.weight": (32, 32),
    "decoder_proj_context.bias": (32,),
    "decoder.0.self_attn.qkv.weight": (96, 32),
    "decoder.0.cross_attn.q.weight": (32, 32),
    "decoder.0.cross_attn.kv.weight": (64, 32),
    "decoder.0.cross_attn.kv.bias": (64,),
    "decoder.0.query_norm.weight": (32,),
    "decoder.0.context_norm.bias": (32,),
    "decoder.1.norm2.weight": (32,),
    "decoder_norm.bias": (32,),
}
# 4M-21 style: SwiGLU (hidden int(2 * 192 / 3) = 128, fc3), no linear biases, zero LayerNorm
# bias buffers, learned pos_emb for the global tokens, T5 features through emb_proj.
EXPECTED_4M21 = {
    "encoder.0.mlp.fc1.weight": (128, 48),
    "encoder.0.mlp.fc3.weight": (128, 48),
    "encoder.0.mlp.fc2.weight": (48, 128),
    "encoder.0.norm1.bias": (48,),
    "encoder_embeddings.t5_caption.emb_proj.weight": (48, 24),
    "encoder_embeddings.t5_caption.emb_proj.bias": (48,),
    "encoder_embeddings.t5_caption.pos_emb": (1, 512, 48),
    "encoder_embeddings.tok_dinov2_global.pos_emb": (1, 16, 48),
    "decoder_embeddings.tok_dinov2@224.pos_emb": (1, 16, 48),
    "decoder_embeddings.tok_imagebind@224.to_logits.weight": (92, 48),
    "decoder.1.cross_attn.kv.weight": (96, 48),
}
ABSENT_4M21 = [
    "encoder.0.attn.qkv.bias",
    "encoder.0.mlp.fc1.bias",
    "decoder.0.cross_attn.q.bias",
    "decoder_embeddings.t5_caption.mod_emb",
    "decoder_embeddings.rgb@224.mod_emb",
]


def _count_4m() -> int:
    """Number of state-dict entries of the "4m" config, counted module by module."""
    n_enc_emb = 3 + 5 * 3 + 2 * 3  # rgb (mod, pos, proj), 5 image tokens, caption and det
    n_dec_emb = 5 * 4 + 2 * 4  # mod, pos, token_emb, to_logits
    n_block = 2 + 4 + 2 + 4  # norm1, qkv w/b, proj w/b, norm2, fc1 w/b, fc2 w/b
    n_dblock = 2 + 4 + 6 + 2 + 2 + 2 + 4  # + cross q, kv, proj and query/context norms
    return 1 + n_enc_emb + n_dec_emb + 2 * n_block + 2 + 2 + 2 * n_dblock + 2


def test_state_dict_layout_4m():
    config = R.ml4m_config("4m")
    state = R.ml4m_state_dict(config)
    for name, shape in EXPECTED_4M.items():
        assert state[name].shape == shape, name
    assert len(state) == _count_4m()
    assert all(v.dtype == np.float32 for v in state.values())
    # non-trivial values: mapping mistakes must show
    assert np.abs(state["encoder.0.norm1.weight"] - 1).min() > 0
    assert np.abs(state["decoder.1.mlp.fc2.bias"]).min() > 0
    assert not np.allclose(
        state["encoder.0.attn.qkv.weight"][:32], state["encoder.0.attn.qkv.weight"][32:64]
    )
    # share_modality_embeddings: FourM ties the decoder's mod_emb to the encoder's
    np.testing.assert_array_equal(
        state["encoder_embeddings.det.mod_emb"], state["decoder_embeddings.det.mod_emb"]
    )


def test_state_dict_layout_4m21():
    config = R.ml4m_config("4m21")
    state = R.ml4m_state_dict(config, seed=3)
    for name, shape in EXPECTED_4M21.items():
        assert state[name].shape == shape, name
    for name in ABSENT_4M21:
        assert name not in state, name
    np.testing.assert_array_equal(state["decoder.0.norm2.bias"], 0)  # LayerNorm(bias=False) buffer
    assert not np.allclose(
        state["encoder_embeddings.det.mod_emb"], state["decoder_embeddings.det.mod_emb"]
    )
    assert set(R.ml4m_state_dict(config, seed=4)) == set(state)


def test_sincos_tables_follow_ml4m_formula():
    """2D: token n of an h x w grid uses (n // h, n % h) (ml-4m's 'ij' meshgrid of (w, h))."""
    d, h = 8, 4
    table = L.sincos_2d(h, h, d)[0]
    n = 6
    a, b = n // h, n % h
    omega = [1 / 10000 ** (k / 2) for k in range(2)]
    want = [math.sin(a * w) for w in omega] + [math.cos(a * w) for w in omega]
    want += [math.sin(b * w) for w in omega] + [math.cos(b * w) for w in omega]
    np.testing.assert_allclose(table[n], want, atol=1e-6)
    one = L.sincos_1d(5, 4)[0]
    np.testing.assert_allclose(
        one[3], [math.sin(3), math.sin(3e-2), math.cos(3), math.cos(3e-2)], atol=1e-6
    )


def test_logits_shapes_and_order(setup):
    config, _, mod_dict, _, _, logits = setup
    info = R.ml4m_modality_info(config)
    assert list(logits) == [m for m in mod_dict if m in config["domains_out"]]
    for mod, lg in logits.items():
        tm = np.asarray(mod_dict[mod]["target_mask"])
        if info[mod]["type"] == "img":
            n = int((~tm[0]).sum())
        else:
            n = int((~(tm[0, 1:] | tm[0, :-1])).sum())
        assert lg.shape == (2, n, info[mod]["vocab_size"])
        assert np.isfinite(lg).all()
    assert any(v.shape[1] > 0 for m, v in logits.items() if info[m]["type"] == "img")


def _perturb_masked(config, mod_dict, rng):
    """Change every input-masked value (pixels of masked patches, ids, features)."""
    info = R.ml4m_modality_info(config)
    out = copy.deepcopy(mod_dict)
    for mod, d in out.items():
        im = np.asarray(d["input_mask"], bool)
        t = d["tensor"]
        if info[mod]["encoder"] == "pixels":
            ps, (gh, gw) = info[mod]["patch_size"], info[mod]["grid"]
            pm = np.repeat(np.repeat(im.reshape(len(t), gh, gw), ps, 1), ps, 2)
            t[np.broadcast_to(pm[:, None], t.shape)] += 3.0
        elif info[mod]["type"] == "img":
            flat = t.reshape(len(t), -1)
            flat[im] = (flat[im] + 1) % info[mod]["vocab_size"]
            d["tensor"] = flat.reshape(t.shape)
        elif info[mod]["type"] == "seq_emb":
            t[im] = rng.standard_normal(t[im].shape)
        else:  # only masked positions that are not decoder targets
            free = im & np.asarray(d["target_mask"], bool)
            t[free] = rng.integers(1, info[mod]["vocab_size"], free.sum())
    return out


def test_masked_input_tokens_do_not_change_logits(setup):
    config, state, mod_dict, ne, nd, logits = setup
    changed = _perturb_masked(config, mod_dict, np.random.default_rng(0))
    assert _close(R.ml4m_logits(state, config, changed, ne, nd), logits)
    # and the same change on a kept (unmasked) input token does change them
    mod = next(m for m in mod_dict if "tok_" in m and not mod_dict[m]["input_mask"].all())
    other = copy.deepcopy(mod_dict)
    flat = other[mod]["tensor"].reshape(2, -1)
    i = int(np.argmin(other[mod]["input_mask"].reshape(2, -1)[0]))
    flat[0, i] = (flat[0, i] + 1) % R.ml4m_modality_info(config)[mod]["vocab_size"]
    assert not _close(R.ml4m_logits(state, config, other, ne, nd), logits)


def test_modality_order_does_not_change_logits(setup):
    """ml-4m shuffles the decoder's modalities; the encoder sees a set: order must not matter."""
    config, state, mod_dict, ne, nd, logits = setup
    reordered = dict(reversed(list(mod_dict.items())))
    got = R.ml4m_logits(state, config, reordered, ne, nd)
    assert _close({k: got[k] for k in logits}, logits)


def test_permuting_encoder_tokens_with_positions_keeps_decoder_output(setup):
    config, state, mod_dict, ne, nd, _ = setup
    info = R.ml4m_modality_info(config)
    x, emb, mask = R.forward_mask_encoder(state, config, info, mod_dict, ne)
    dec_x, dec_emb, _, sa_mask, _ = R.forward_mask_decoder(state, config, info, mod_dict, nd)

    def run(x, emb, mask):
        enc = R.forward_encoder(state, config, x + emb, mask)
        ctx = L.linear(state, "decoder_proj_context", enc) + emb
        return enc, R.forward_decoder(state, config, dec_x + dec_emb, ctx, sa_mask, mask)

    enc, y = run(x, emb, mask)
    perm = np.random.default_rng(0).permutation(x.shape[1])
    enc_p, y_p = run(x[:, perm], emb[:, perm], mask[:, perm])
    np.testing.assert_allclose(enc_p, enc[:, perm], atol=1e-10)
    np.testing.assert_allclose(y_p, y, atol=1e-10)
    # tokens moved without their position embeddings do change the result
    _, y_moved = run(x[:, perm], emb, mask[:, perm])
    assert not np.allclose(y_moved, y, atol=1e-6)


def test_sequence_targets_are_shifted_and_causal():
    """Logits at target position t see ids up to t: changing the last target id changes no
    logit, changing the first changes every logit of that domain only."""
    config = R.ml4m_config("4m")
    state = R.ml4m_state_dict(config)
    mod_dict = R.ml4m_example_inputs(config, 2, 1)
    ne, nd = R.ml4m_token_counts(config, mod_dict)
    base = R.ml4m_logits(state, config, mod_dict, ne, nd)
    targets = np.flatnonzero(~mod_dict["det"]["target_mask"][0])
    last, first = copy.deepcopy(mod_dict), copy.deepcopy(mod_dict)
    last["det"]["tensor"][0, targets[-1]] += 1
    first["det"]["tensor"][0, targets[0]] += 1
    assert _close(R.ml4m_logits(state, config, last, ne, nd), base)
    got = R.ml4m_logits(state, config, first, ne, nd)
    assert not np.allclose(got["det"][0], base["det"][0], atol=1e-6)
    np.testing.assert_allclose(got["det"][1], base["det"][1], atol=1e-10)
    assert _close(
        {k: v for k, v in got.items() if k != "det"}, {k: v for k, v in base.items() if k != "det"}
    )


def test_checkpoint_round_trip(tmp_path, setup):
    config, state, *_ = setup
    path = tmp_path / "model.safetensors"
    R.save_ml4m_checkpoint(path, state, config)
    loaded, cfg = R.load_ml4m_checkpoint(path)
    assert cfg == config
    assert loaded.keys() == state.keys()
    for k in state:
        np.testing.assert_array_equal(loaded[k], state[k])
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    meta = header["__metadata__"]
    assert meta["act_layer"] == config["act_layer"] and meta["dim"] == str(config["dim"])
    assert meta["domains_in"] == str(config["domains_in"])
    yaml = pytest.importorskip("yaml")  # what ml-4m's load_safetensors parses them with
    parsed = {k: yaml.safe_load(v.replace("None", "null")) for k, v in meta.items()}
    assert parsed == config


def test_bad_inputs_raise_clear_errors(setup):
    config, state, mod_dict, ne, nd, _ = setup
    with pytest.raises(ValueError, match="variant"):
        R.ml4m_config("4m-xl")
    with pytest.raises(ValueError, match="tok_bogus"):
        R.ml4m_modality_info({**config, "domains_in": [*config["domains_in"], "tok_bogus"]})
    uneven = copy.deepcopy(mod_dict)
    mod = next(m for m, d in uneven.items() if "tok_" in m and (~d["target_mask"][0]).sum() > 1)
    tm = uneven[mod]["target_mask"].reshape(2, -1)
    tm[0, np.argmin(tm[0])] = True
    with pytest.raises(ValueError, match=mod):
        R.ml4m_logits(state, config, uneven, ne, nd)
    with pytest.raises(ValueError, match="tokens"):
        R.ml4m_logits(state, config, mod_dict, 10_000, nd)
