"""1D image-token sequences in 4M (kind image_tokens_1d): the registry entry, 1D positions,
masking laid out as MaskGIT subsets or left to right within the Dirichlet budgets, a decoder
that is causal over the sequence, and generation: AR with the KV cache equals AR recomputed
and a step-by-step Python reference, MaskGIT / ROAR fill every position, known tokens stay."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.fourm import FourMMasking, build_fourm, build_registry, example_batch
from mmjax.fourm.embeddings import position_table
from mmjax.fourm.generation.generate import GenerationStep, generate
from mmjax.fourm.generation.scoring import image_token_log_probs
from mmjax.fourm.modalities import MASK_INPUT, ModalitySpec

K, V = 12, 20  # tokens per image, codebook size
REG = build_registry({
    "tok_1d": dict(kind="image_tokens_1d", vocab_size=V, num_tokens=K),
    "tok_a": dict(kind="image_tokens", vocab_size=16, grid=(2, 2)),
    "cap": dict(kind="sequence", vocab_size=30, max_length=K),
})  # fmt: skip
SENTINELS, EOS = list(range(4, 12)), 1
B = 3


def test_registry_entry_and_bad_shapes():
    spec = REG["tok_1d"]
    assert spec.grid == (K,) and spec.num_tokens == K and spec.is_target and spec.is_causal
    same = build_registry({"t": dict(kind="image_tokens_1d", vocab_size=V, grid=[K])})["t"]
    assert same.grid == (K,)
    with pytest.raises(ValueError, match=r"one axis.*image_tokens_1d"):
        ModalitySpec("t", "image_tokens", vocab_size=V, grid=(K,))
    with pytest.raises(ValueError, match=r"grid=\(K,\)"):
        ModalitySpec("t", "image_tokens_1d", vocab_size=V, grid=(3, 4))
    with pytest.raises(ValueError, match="num_tokens 5 and grid"):
        build_registry({"t": dict(kind="image_tokens_1d", vocab_size=V, num_tokens=5, grid=(6,))})


def test_positions_are_1d_sincos_or_learned():
    width = 16
    table = position_table(REG, width)
    start = [s.name for s in REG].index("tok_1d")
    offset = sum(s.num_tokens for s in REG.specs[:start])
    # numpy reference: sin / cos of p * 10000^(-i / (D/2))
    omega = 1.0 / 10000 ** (np.arange(width // 2) / (width // 2))
    angles = np.arange(K)[:, None] * omega[None]
    want = np.concatenate([np.sin(angles), np.cos(angles)], 1)
    np.testing.assert_allclose(table[offset : offset + K], want, atol=1e-6)
    learned = build_registry(
        {"t": dict(kind="image_tokens_1d", vocab_size=V, grid=(K,), learned_positions=True)}
    )
    model = build_fourm({"size": "tiny", "width": width, "num_heads": 2, "encoder_depth": 1,
                         "decoder_depth": 1}, learned)  # fmt: skip
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), example_batch(learned)))
    assert nn.unbox(shapes)["params"]["embeddings"]["pos_emb_t"].shape == (K, width)


def _masking(rate, e=10, t=9):
    return FourMMasking(REG, e, t, "all_to_all", SENTINELS, EOS, ar_rate_1d=rate)


def _parts(out, side):
    sel = out[f"{side}_mask"] & (out[f"{side}_modality"] == REG.index("tok_1d"))
    return sel


@pytest.mark.parametrize("rate", [0.0, 1.0, 0.5])
def test_masking_layouts_within_budgets(rate):
    rng = np.random.default_rng(0)
    masking, layouts = _masking(rate), set()
    for i in range(60):
        x = rng.integers(0, V, K)
        cap = np.zeros(K, np.int32)
        cap[:5] = rng.integers(12, 30, 5)
        ex = {"tok_1d": x, "tok_a": rng.integers(0, 16, (2, 2)), "cap": cap}
        out = masking(ex, np.random.default_rng(i))
        assert out["enc_mask"].sum() <= 10 and out["dec_mask"].sum() <= 9
        enc, dec = _parts(out, "enc"), _parts(out, "dec")
        ep, dp = out["enc_positions"][enc], out["dec_positions"][dec]
        # inputs and targets are the example's own tokens at disjoint positions
        np.testing.assert_array_equal(out["enc_tokens"][enc], x[ep])
        np.testing.assert_array_equal(out["dec_target_tokens"][dec], x[dp])
        assert not set(ep) & set(dp) and len(set(ep)) == len(ep) and len(set(dp)) == len(dp)
        inputs = out["dec_input_tokens"][dec]
        # left to right: a prefix in, the next tokens out, each input the token before
        ar = (
            np.array_equal(ep, np.arange(len(ep)))
            and np.array_equal(dp, np.arange(len(ep), len(ep) + len(dp)))
            and np.array_equal(inputs, np.concatenate([[MASK_INPUT], x])[dp])
        )
        maskgit = (inputs == MASK_INPUT).all()  # random subsets, every input the mask
        assert ar if rate == 1 else maskgit if rate == 0 else ar or maskgit
        if len(dp) > 1:
            layouts.add("ar" if ar else "maskgit")
    assert layouts == {0.0: {"maskgit"}, 1.0: {"ar"}, 0.5: {"ar", "maskgit"}}[rate]


def test_masking_refuses_bad_1d_input():
    masking = _masking(0.5)
    with pytest.raises(ValueError, match=r"1D tokens must have shape \(12,\)"):
        masking({"tok_1d": np.zeros((3, 4), np.int32)}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="ar_rate_1d must lie in"):
        _masking(1.5)


def tiny_model(registry=REG):
    """A tiny random 4M whose token embeddings are large (std 0.5), so its outputs depend on
    the tokens it reads, as a trained model's do."""
    model = build_fourm({"size": "tiny", "width": 32, "num_heads": 2, "encoder_depth": 1,
                         "decoder_depth": 2}, registry)  # fmt: skip
    variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), example_batch(registry, 1, 4, 4)))
    emb = variables["params"]["embeddings"]
    for name in list(emb):
        if name.startswith("tok_emb_"):
            emb[name] = emb[name] * 25.0
    return model, variables


@pytest.fixture(scope="module")
def setup():
    model, variables = tiny_model()
    rng = np.random.default_rng(1)
    cap = np.zeros((B, K), np.int32)
    cap[:, :4] = rng.integers(12, 30, (B, 4))
    return model, variables, {"cap": cap, "tok_a": rng.integers(0, 16, (B, 4))}


def _logits_by_full_forward(model, variables, cond, inputs, upto=None):
    """Reference: the decoder run over teacher-forced inputs [B, K] of positions 0..K-1
    (positions after `upto` left out), one jitted forward of fixed shape."""
    from mmjax.fourm.generation.conditioning import condition_blocks

    blocks = condition_blocks(REG, cond, list(cond), B)
    blocks.pop("block")
    valid = np.arange(K) <= (K if upto is None else upto)
    return np.asarray(_forward(model, variables, blocks, jnp.asarray(inputs), valid))[..., :V]


@partial(jax.jit, static_argnames="model")
def _forward(model, variables, blocks, inputs, valid):
    context, cmask = model.apply(variables, blocks, method=model.encode)
    pos = jnp.broadcast_to(jnp.arange(K), (B, K))
    mod = jnp.full((B, K), REG.index("tok_1d"))
    dec = (inputs, mod, pos, jnp.broadcast_to(valid, (B, K)))
    return model.apply(variables, context, cmask, *dec, method=model.decode)


def test_decoder_is_causal_over_1d_tokens(setup):
    model, variables, cond = setup
    rng = np.random.default_rng(2)
    inputs = np.concatenate([np.full((B, 1), MASK_INPUT), rng.integers(0, V, (B, K - 1))], 1)
    changed = inputs.copy()
    changed[:, 7:] = (changed[:, 7:] + 1) % V
    a = _logits_by_full_forward(model, variables, cond, inputs)
    b = _logits_by_full_forward(model, variables, cond, changed)
    np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-5)  # earlier positions unchanged
    assert np.abs(a[:, 7:] - b[:, 7:]).max() > 1e-3  # later ones read their inputs


def test_ar_with_kv_cache_equals_recompute_and_a_python_reference(setup):
    model, variables, cond = setup
    key = jax.random.key(3)
    outs = {}
    for scheme in ("ar", "ar_nocache"):
        step = GenerationStep("tok_1d", scheme=scheme, temperature=0.0)
        outs[scheme] = np.asarray(generate(model, variables, REG, cond, [step], key)["tok_1d"])
    np.testing.assert_array_equal(outs["ar"], outs["ar_nocache"])
    assert outs["ar"].shape == (B, K) and outs["ar"].min() >= 0 and outs["ar"].max() < V
    # greedy, left to right, one full decoder pass per token from MASK_INPUT
    tokens = np.zeros((B, K), np.int64)
    for i in range(K):
        inputs = np.concatenate([np.full((B, 1), MASK_INPUT), tokens[:, :-1]], 1)
        logits = _logits_by_full_forward(model, variables, cond, inputs, upto=i)
        tokens[:, i] = logits[:, i].argmax(-1)
    np.testing.assert_array_equal(outs["ar"], tokens)
    # sampled: the cache and the recompute draw the same tokens from the same key
    sampled = [
        np.asarray(generate(model, variables, REG, cond,
                            [GenerationStep("tok_1d", scheme=s, temperature=1.0)], key)["tok_1d"])
        for s in ("ar", "ar_nocache")
    ]  # fmt: skip
    np.testing.assert_array_equal(*sampled)


def test_ar_continues_a_known_prefix_as_a_python_reference(setup):
    """AR with known_masks: the known tokens are fed back instead of draws; greedy, the rest
    equals a left-to-right reference whose decoder reads the known prefix; cache = recompute."""
    model, variables, cond = setup
    rng = np.random.default_rng(8)
    given = rng.integers(0, V, (B, K))
    known = np.zeros((B, K), bool)
    known[0, :5], known[1, :1], known[2, :K] = True, True, True
    outs = {}
    for scheme in ("ar", "ar_nocache"):
        step = GenerationStep("tok_1d", scheme=scheme, temperature=0.0)
        outs[scheme] = np.asarray(
            generate(model, variables, REG, {**cond, "tok_1d": given}, [step], jax.random.key(9),
                     known_masks={"tok_1d": known})["tok_1d"]
        )  # fmt: skip
    np.testing.assert_array_equal(outs["ar"], outs["ar_nocache"])
    np.testing.assert_array_equal(outs["ar"][known], given[known])
    tokens = np.where(known, given, 0)
    for i in range(K):
        inputs = np.concatenate([np.full((B, 1), MASK_INPUT), tokens[:, :-1]], 1)
        logits = _logits_by_full_forward(model, variables, cond, inputs, upto=i)
        tokens[:, i] = np.where(known[:, i], given[:, i], logits[:, i].argmax(-1))
    np.testing.assert_array_equal(outs["ar"], tokens)


@pytest.mark.parametrize("scheme", ["maskgit", "roar"])
def test_parallel_schemes_fill_every_position(setup, scheme):
    model, variables, cond = setup
    step = GenerationStep("tok_1d", scheme=scheme, steps=4)
    out, hist = generate(model, variables, REG, cond, [step], jax.random.key(4),
                         return_history=True)  # fmt: skip
    h = hist["tok_1d"]
    assert h["all_known"] and (h["committed"] >= 1).all()
    np.testing.assert_array_equal(h["committed"].sum(0), np.full(B, K))
    np.testing.assert_array_equal(h["committed"], h["scheduled"])
    t = np.asarray(out["tok_1d"])
    assert t.shape == (B, K) and t.min() >= 0 and t.max() < V


def test_maskgit_one_step_is_the_argmax_of_the_all_masked_scores(setup):
    model, variables, cond = setup
    step = GenerationStep("tok_1d", scheme="maskgit", steps=1, temperature=0.0)
    got = np.asarray(generate(model, variables, REG, cond, [step], jax.random.key(0))["tok_1d"])
    grid = np.stack([np.full((B, K), v) for v in range(V)], -1)  # every token at every position
    logp = np.stack(
        [image_token_log_probs(model, variables, REG, cond, "tok_1d", grid[..., v])
         for v in range(V)], -1,
    )  # fmt: skip
    np.testing.assert_array_equal(got, logp.argmax(-1))
    np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, atol=1e-4)


def test_completion_keeps_a_known_prefix(setup):
    model, variables, cond = setup
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, V, (B, K))
    known = np.zeros((B, K), bool)
    known[:, :4] = True
    step = GenerationStep("tok_1d", scheme="maskgit", steps=3)
    out = generate(model, variables, REG, {**cond, "tok_1d": tokens}, [step], jax.random.key(6),
                   known_masks={"tok_1d": known})  # fmt: skip
    np.testing.assert_array_equal(np.asarray(out["tok_1d"])[known], tokens[known])
    with pytest.raises(ValueError, match=r"must be bool \[3, 12\]"):
        generate(model, variables, REG, {**cond, "tok_1d": tokens}, [step], jax.random.key(6),
                 known_masks={"tok_1d": known[:, :4]})  # fmt: skip
    with pytest.raises(ValueError, match=r"1D image tokens must have shape \[B, 12\]"):
        generate(model, variables, REG, {"tok_1d": tokens[:, :5]}, ["tok_a"], jax.random.key(0))


def test_generation_steps_lower_for_a_1d_target_on_a_mesh(setup):
    """launch/aot_compile.py's lowering of a MaskGIT step and an AR decode step for the 1D
    target on a (data=2, fsdp=2, tensor=2) CPU mesh: K tokens out, a KV cache of K slots."""
    from mmjax.fourm.generation import lowering
    from mmjax.parallel import DEFAULT_RULES, create_mesh

    model = setup[0]
    mesh = create_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
    step = lowering.lower_parallel_step(model, mesh, 2, rules=DEFAULT_RULES, target="tok_1d")
    tokens_out = jax.tree.leaves(step.compile().out_info)[0]
    assert tokens_out.shape == (2, K) and tokens_out.dtype == jnp.int32
    ar = lowering.lower_decode_step(model, mesh, 2, rules=DEFAULT_RULES, target="tok_1d")
    ar.compile()
    cache = ar.args_info[0][3]  # per decoder layer [rows, K, heads, head_dim]
    assert cache["k"][0].shape[:2] == (2 * 2, K), cache["k"][0].shape
    with pytest.raises(ValueError, match=r"'tok_a' is not one of the sequence/image_tokens_1d"):
        lowering.lower_decode_step(model, mesh, 2, rules=DEFAULT_RULES, target="tok_a")
