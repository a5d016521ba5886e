"""FourM against brute force and properties: parameter counts vs the 4M paper, the decoder
mask, causality / modality separation, padding and permutation invariance of the encoder, KV
cache decoding vs teacher forcing, the loss vs numpy, vocab masking, bf16, remat, sharding."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.fourm import build_registry, fourm7_modalities
from mmjax.fourm.loss import fourm_loss
from mmjax.fourm.model import FourM, decoder_attention_mask, example_batch
from mmjax.fourm.params import main as params_main
from mmjax.fourm.params import param_counts
from mmjax.fourm.presets import PUBLISHED_TRUNK_PARAMS, build_fourm
from mmjax.parallel import DEFAULT_RULES, create_mesh, state_shardings

REG = build_registry({
    "rgb": dict(kind="pixels", grid=(2, 2), patch_size=4, channels=3),
    "tok_a": dict(kind="image_tokens", vocab_size=24, grid=(3, 3)),
    "cap": dict(kind="sequence", vocab_size=40, max_length=8),
    "meta": dict(kind="sequence", vocab_size=16, max_length=5),
})  # fmt: skip
CAP, META, RGB, TOK = (REG.index(n) for n in ("cap", "meta", "rgb", "tok_a"))
B, E, T = 8, 12, 20
IS_SEQ = np.array([s.kind == "sequence" for s in REG])


def random_batch(seed: int, full_caption: bool = False) -> dict:
    """Random masked batch: E encoder slots (some padding, garbage in the padding), T decoder
    slots with targets of every target modality in shuffled slot order (some padding). With
    `full_caption`, every row's caption targets are positions 0..7 in slots 0..7 in order."""
    rng = np.random.default_rng(seed)
    batch = example_batch(REG, B, E, T)
    pairs = [(m, p) for m, s in enumerate(REG) for p in range(s.num_tokens)]
    for b in range(B):
        n = rng.integers(E // 2, E + 1)
        for slot, k in enumerate(rng.choice(len(pairs), E, replace=False)):
            m, p = pairs[k]
            vocab = REG.specs[m].vocab_size
            batch["enc_modality"][b, slot], batch["enc_positions"][b, slot] = m, p
            batch["enc_tokens"][b, slot] = rng.integers(vocab) if vocab else 0
            batch["enc_mask"][b, slot] = slot < n
        targets = [(m, p) for m, p in pairs if REG.specs[m].is_target]
        if full_caption:
            rest = [(m, p) for m, p in targets if m != CAP]
            chosen = [(CAP, p) for p in range(8)] + [
                rest[i] for i in rng.choice(len(rest), T - 8, replace=False)
            ]
        else:
            chosen = [targets[i] for i in rng.choice(len(targets), T, replace=False)]
        n = rng.integers(T - 6, T + 1) if not full_caption else T - 2
        for slot, (m, p) in enumerate(chosen):
            vocab = REG.specs[m].vocab_size
            batch["dec_modality"][b, slot], batch["dec_positions"][b, slot] = m, p
            batch["dec_target_tokens"][b, slot] = rng.integers(vocab)
            batch["dec_input_tokens"][b, slot] = rng.integers(vocab) if IS_SEQ[m] else 0
            batch["dec_mask"][b, slot] = slot < n
    batch["pixels_rgb"] = rng.random(batch["pixels_rgb"].shape).astype(np.float32)
    return batch


@pytest.fixture(scope="module")
def tiny():
    model = build_fourm({"size": "tiny"}, REG)
    variables = jax.jit(model.init)(jax.random.key(0), random_batch(0))
    return model, variables, jax.jit(model.apply)


def test_trunk_param_counts_match_4m_paper():
    for size, published in PUBLISHED_TRUNK_PARAMS.items():
        trunk = param_counts(build_fourm({"size": size}, REG))["trunk"]
        assert abs(trunk / published - 1) < 0.05, (size, trunk, published)


def test_params_cli_prints_counts(capsys):
    params_main(["--preset", "tiny"])
    out = capsys.readouterr().out
    counts = param_counts(build_fourm({"size": "tiny"}, build_registry(fourm7_modalities())))
    assert "tiny" in out and f"{counts['trunk']:,}" in out and f"{counts['total']:,}" in out


def test_decoder_mask_matches_brute_force():
    rng = np.random.default_rng(3)
    mod, pos = rng.integers(0, 4, (2, 15)), rng.integers(0, 5, (2, 15))
    valid = rng.random((2, 15)) < 0.8
    got = np.asarray(decoder_attention_mask(jnp.asarray(mod), jnp.asarray(pos), valid, IS_SEQ))
    for b in range(2):
        for i in range(15):
            for j in range(15):
                ok = valid[b, i] and valid[b, j] and mod[b, i] == mod[b, j]
                ok = ok and (not IS_SEQ[mod[b, i]] or pos[b, j] <= pos[b, i])
                assert got[b, i, j] == ok, (b, i, j)


def test_causality_and_modality_separation(tiny):
    _, variables, apply = tiny
    batch = random_batch(1)
    base = np.asarray(apply(variables, batch))
    slots = np.argwhere((batch["dec_modality"] == CAP) & batch["dec_mask"])
    b, j = slots[len(slots) // 2]
    changed = {k: v.copy() for k, v in batch.items()}
    changed["dec_input_tokens"][b, j] = (batch["dec_input_tokens"][b, j] + 1) % 40
    out = np.asarray(apply(variables, changed))
    same_seq = batch["dec_modality"][b] == CAP
    earlier = same_seq & (batch["dec_positions"][b] < batch["dec_positions"][b, j])
    keep = (~same_seq | earlier) & batch["dec_mask"][b]  # padded rows are not outputs
    np.testing.assert_array_equal(out[b, keep], base[b, keep])
    np.testing.assert_array_equal(np.delete(out, b, 0), np.delete(base, b, 0))
    assert np.abs(out[b, j] - base[b, j]).max() > 1e-4  # the change is seen where it should


def test_padded_encoder_tokens_do_not_matter(tiny):
    _, variables, apply = tiny
    batch = random_batch(2)
    pad = ~batch["enc_mask"]
    assert pad.any()
    changed = {k: v.copy() for k, v in batch.items()}
    rng = np.random.default_rng(5)
    changed["enc_tokens"][pad] = rng.integers(0, 16, pad.sum())
    changed["enc_modality"][pad] = rng.integers(0, 4, pad.sum())
    changed["enc_positions"][pad] = rng.integers(0, 4, pad.sum())
    np.testing.assert_allclose(apply(variables, changed), apply(variables, batch), atol=1e-6)


def test_encoder_permutation_invariance(tiny):
    _, variables, apply = tiny
    batch = random_batch(3)
    perm = np.random.default_rng(7).permutation(E)
    permuted = {k: (v[:, perm] if k.startswith("enc_") else v) for k, v in batch.items()}
    got, want = apply(variables, permuted), apply(variables, batch)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precompute_cross", [True, False])
def test_kv_cache_decoding_matches_teacher_forcing(tiny, precompute_cross):
    model, variables, apply = tiny
    batch = random_batch(4, full_caption=True)
    full = np.asarray(apply(variables, batch))
    context, cmask = jax.jit(partial(model.apply, method=FourM.encode))(variables, batch)
    if precompute_cross:
        cache = jax.jit(partial(model.apply, method=FourM.init_cache), static_argnums=(1, 2))(
            variables, B, 8, context
        )
        assert len(cache["cross_k"]) == model.decoder_depth
    else:
        cache = model.init_cache(B, 8)  # unbound: zeros only
    step = jax.jit(lambda c, tok, i: model.apply(
        variables, context, cmask, c, tok, i, CAP, i, method=FourM.decode_step))  # fmt: skip
    for i in range(8):
        logits, cache = step(cache, batch["dec_input_tokens"][:, i], i)
        np.testing.assert_allclose(logits, full[:, i], rtol=1e-4, atol=1e-4, err_msg=f"step {i}")


def _np_ce(logits, batch):
    lg = logits.astype(np.float64)
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    tgt = batch["dec_target_tokens"]
    return lse - np.take_along_axis(lg, tgt[..., None], -1)[..., 0]


def test_loss_matches_numpy(tiny):
    _, variables, apply = tiny
    batch = random_batch(5)
    batch["dec_mask"] &= batch["dec_modality"] != META  # an absent modality
    logits = np.asarray(apply(variables, batch)) * 3.0
    nll = _np_ce(logits, batch)
    per_mod, all_w = {}, np.zeros_like(nll, bool)
    for name in ("cap", "tok_a"):
        w = batch["dec_mask"] & (batch["dec_modality"] == REG.index(name))
        all_w |= w
        per_mod[name] = nll[w].mean()
    loss, metrics = fourm_loss(jnp.asarray(logits), batch, REG)
    np.testing.assert_allclose(loss, np.mean(list(per_mod.values())), rtol=1e-5)
    for name, ref in per_mod.items():
        np.testing.assert_allclose(metrics[f"loss/{name}"], ref, rtol=1e-5)
    assert metrics["count/meta"] == 0 and metrics["loss/meta"] == 0 and metrics["acc/meta"] == 0
    assert all(np.isfinite(v) for v in metrics.values())
    acc = (logits.argmax(-1) == batch["dec_target_tokens"])[all_w].mean()
    np.testing.assert_allclose(metrics["acc"], acc, rtol=1e-6)
    tok_loss, _ = fourm_loss(jnp.asarray(logits, jnp.bfloat16), batch, REG, per_token=True)
    np.testing.assert_allclose(tok_loss, nll[all_w].mean(), rtol=2e-2)


def test_logits_beyond_vocab_are_masked(tiny):
    _, variables, apply = tiny
    batch = random_batch(6)
    logits = np.asarray(apply(variables, batch))
    vocab = np.array([s.vocab_size for s in REG])[batch["dec_modality"]]  # [B, T]
    assert (logits.argmax(-1) < vocab).all()
    beyond = np.arange(logits.shape[-1]) >= vocab[..., None]
    assert beyond.any() and (logits[beyond] <= -1e8).all()
    assert np.isfinite(logits).all()


def _head_batch():
    batch = random_batch(8)
    batch["dec_modality"][0, :3] = RGB  # a non-target id in padding: all logits masked
    batch["dec_mask"][0, :3] = False
    return batch


def _loss(model, batch):
    return lambda v: fourm_loss(model.apply(v, batch), batch, REG)[0]


@pytest.fixture(scope="module")
def dense_heads(tiny):
    """The dense heads' logits and parameter gradients on _head_batch(), computed once for
    every chunk size below."""
    model, variables, apply = tiny
    batch = _head_batch()
    return np.asarray(apply(variables, batch)), jax.jit(jax.grad(_loss(model, batch)))(variables)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_grouped_heads_equal_dense_heads(tiny, dense_heads, chunk):
    """The grouped heads (tokens sorted by modality into chunks) give the dense heads' logits
    and parameter gradients on the same parameters, padding and non-target slots included."""
    model, variables, _ = tiny
    want, g_dense = dense_heads
    batch = _head_batch()
    grouped = model.clone(head_impl="grouped", head_chunk=chunk)
    got = np.asarray(jax.jit(grouped.apply)(variables, batch))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (got[0, :3] <= -1e8).all()
    g_grouped = jax.jit(jax.grad(_loss(grouped, batch)))(variables)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(g_dense), jax.tree.leaves(g_grouped), strict=True
    ):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=str(path))


def test_bad_head_impl_is_refused(tiny):
    model, variables, _ = tiny
    with pytest.raises(ValueError, match="impl must be one of"):  # refused while tracing
        jax.eval_shape(model.clone(head_impl="sparse").apply, variables, random_batch(0))


def test_bf16_compute_close_to_f32_and_remat_identical(tiny):
    model, variables, apply = tiny
    batch = random_batch(7)
    want = np.asarray(apply(variables, batch))
    got = jax.jit(model.clone(dtype=jnp.bfloat16).apply)(variables, batch)
    assert got.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    ok = batch["dec_mask"]
    diff = np.abs(np.asarray(got, np.float32) - want)[ok]
    live = want[ok] > -1e8
    assert diff[live].max() < 0.05 * np.abs(want[ok][live]).max() + 0.05
    remat = model.clone(remat=True)
    abstract = jax.eval_shape(remat.init, jax.random.key(0), batch)
    assert jax.tree.structure(abstract) == jax.tree.structure(variables)
    np.testing.assert_allclose(jax.jit(remat.apply)(variables, batch), want, rtol=1e-5, atol=1e-5)


def test_state_shardings_on_meshes():
    abstract = jax.eval_shape(
        lambda: build_fourm({"size": "tiny"}, REG).init(jax.random.key(0), random_batch(0))
    )
    cases = {(2, 4, 1): ("fsdp", None), (2, 2, 2): ("fsdp", "tensor")}
    for (d, f, t), (embed, wide) in cases.items():
        mesh = create_mesh({"data": d, "fsdp": f, "tensor": t})
        sh = state_shardings(abstract, mesh)["params"]
        assert sh["encoder_blocks_0"]["attn"]["query"]["kernel"].spec == P(embed, wide, None)
        assert sh["decoder_blocks_1"]["mlp"]["down"]["kernel"].spec == P(wide, embed)
        assert sh["embeddings"]["tok_emb_cap"].spec == P(wide, embed)
        assert sh["heads"]["head_tok_a"]["kernel"].spec == P(embed, wide)
        assert sh["encoder_norm"]["scale"].spec == P(embed)


def test_sharded_forward_equals_single_device(tiny, mesh):
    model, variables, apply = tiny
    batch = random_batch(8)
    want = apply(variables, batch)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))
    shardings = state_shardings(abstract, mesh)
    state = jax.device_put(nn.unbox(variables), shardings)
    assert state["params"]["encoder_blocks_0"]["mlp"]["up"]["kernel"].sharding.spec[0] == "fsdp"
    data = NamedSharding(mesh, P(("data", "fsdp")))
    sharded_batch = jax.device_put(batch, data)
    with jax.set_mesh(mesh):
        got = jax.jit(model.clone(sharding_rules=DEFAULT_RULES).apply)(state, sharded_batch)
    assert got.sharding.spec[0] == ("data", "fsdp")  # the logits' activation constraint
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bad_input_raises_clear_errors(tiny):
    model, variables, _ = tiny
    batch = random_batch(0)
    missing = {k: v for k, v in batch.items() if k != "dec_positions"}
    with pytest.raises(ValueError, match="dec_positions"):
        model.apply(variables, missing)
    short = {**batch, "enc_modality": batch["enc_modality"][:, :-1]}
    with pytest.raises(ValueError, match="enc_modality"):
        model.apply(variables, short)
    with pytest.raises(ValueError, match="pixels_rgb"):
        model.apply(variables, {**batch, "pixels_rgb": batch["pixels_rgb"][:, :4]})
    with pytest.raises(ValueError, match="not a sequence modality"):
        model.apply(variables, None, None, {}, 0, 0, TOK, 0, method=FourM.decode_step)
    with pytest.raises(ValueError, match="unknown key"):
        build_fourm({"size": "tiny", "widht": 64}, REG)
    with pytest.raises(ValueError, match="size"):
        build_fourm({"size": "huge"}, REG)
    with pytest.raises(ValueError, match="dec_target_tokens"):
        fourm_loss(jnp.zeros((B, T, 40)), {k: batch[k] for k in ("dec_modality", "dec_mask")}, REG)
