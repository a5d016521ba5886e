"""4M generation against references and properties: token and temperature schedules by hand,
top-k / top-p against numpy, MaskGIT / ROAR commit counts, KV-cache AR == recomputed AR,
guidance scale 1 == no guidance, seeds, editing, chaining, the empty-context guard, errors;
scoring (image_token_log_probs) against the training forward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.fourm import build_fourm, build_registry, example_batch
from mmjax.fourm.generation.generate import GenerationStep, generate
from mmjax.fourm.generation.sampling import (
    commit_counts,
    sample,
    temperature_schedule,
    top_k_filter,
    top_p_filter,
)
from mmjax.fourm.generation.scoring import image_token_log_probs

REG = build_registry({
    "rgb": dict(kind="pixels", grid=(2, 2), patch_size=4, channels=3),
    "tok_a": dict(kind="image_tokens", vocab_size=24, grid=(4, 4)),
    "tok_b": dict(kind="image_tokens", vocab_size=32, grid=(4, 4)),
    "cap": dict(kind="sequence", vocab_size=40, max_length=10),
})  # fmt: skip
B = 3


def tiny_model(registry=REG, width: int = 64, decoder_depth: int = 2):
    """(model, variables): a tiny random 4M over `registry` whose token embeddings have std
    0.5 instead of 0.02, so that its outputs clearly depend on the conditioning tokens (as a
    trained model's do)."""
    model = build_fourm(
        {"size": "tiny", "width": width, "num_heads": 2, "encoder_depth": 1,
         "decoder_depth": decoder_depth},
        registry,
    )  # fmt: skip
    batch = example_batch(registry, 1, 4, 4)
    variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), batch))
    emb = variables["params"]["embeddings"]
    for name in list(emb):
        if name.startswith("tok_emb_"):
            emb[name] = emb[name] * 25.0
    return model, variables


@pytest.fixture(scope="module")
def setup():
    model, variables = tiny_model()
    rng = np.random.default_rng(0)
    cond = {
        "rgb": rng.random((B, 8, 8, 3)).astype(np.float32),
        "tok_b": rng.integers(0, 32, (B, 4, 4)),
    }
    return model, variables, cond


def gen(setup, schedule, seed=1, cond=None, **kw):
    model, variables, base = setup
    return generate(model, variables, REG, base if cond is None else cond, schedule,
                    jax.random.key(seed), **kw)  # fmt: skip


def test_token_schedule_by_hand():
    # cosine, 16 tokens, 4 steps: cumulative round(16 * (1 - cos(pi/8 t))) = 1, 5, 10, 16
    np.testing.assert_array_equal(commit_counts(16, 4, "cosine"), [1, 4, 5, 6])
    np.testing.assert_array_equal(commit_counts(16, 4, "linear"), [4, 4, 4, 4])
    np.testing.assert_array_equal(commit_counts(5, 5, "cosine"), [1, 1, 1, 1, 1])
    # per row: a row with fewer unknown tokens than steps commits one per step, then none
    np.testing.assert_array_equal(commit_counts(jnp.array([16, 2]), 3)[:, 1], [1, 1, 0])
    for n in (1, 2, 3, 7, 16, 33, 64):
        for steps in sorted({1, min(n, 3), n // 3 + 1, n // 2 + 1, n}):
            for kind in ("cosine", "linear"):
                c = np.asarray(commit_counts(n, steps, kind))
                assert c.sum() == n and c.min() >= 1, (n, steps, kind, c)


def test_temperature_schedules():
    np.testing.assert_allclose(temperature_schedule(2.0, 4, "constant"), [2, 2, 2, 2])
    np.testing.assert_allclose(temperature_schedule(2.0, 4, "linear"), [2, 1.5, 1, 0.5])
    np.testing.assert_allclose(temperature_schedule(2.0, 4, "onex"), [2, 1, 2 / 3, 0.5])


def test_top_p_keeps_smallest_set_with_mass_p():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 30)).astype(np.float32) * 2
    for p in (0.05, 0.3, 0.5, 0.9, 0.99):
        kept = np.isfinite(np.asarray(jax.jit(top_p_filter)(logits, p)))
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        for row, pr in enumerate(probs.astype(np.float64)):
            order = np.argsort(-pr)
            n = int(np.searchsorted(np.cumsum(pr[order]), p) + 1)  # smallest n with mass >= p
            want = np.zeros(30, bool)
            want[order[:n]] = True
            np.testing.assert_array_equal(kept[row], want, err_msg=f"p={p} row={row}")
    assert np.isfinite(np.asarray(top_p_filter(logits, 1.0))).all()


def test_top_k_filter_and_top_k_one_is_greedy(setup):
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(16, 30)), jnp.float32)
    kept = np.isfinite(np.asarray(top_k_filter(logits, 5)))
    want = np.argsort(-np.asarray(logits), 1)[:, :5]
    assert (kept.sum(1) == 5).all() and np.take_along_axis(kept, want, 1).all()
    assert np.isfinite(np.asarray(top_k_filter(logits, 0))).all()
    for seed in range(3):
        drawn = sample(jax.random.key(seed), logits, 1.5, top_k=1)
        np.testing.assert_array_equal(drawn, jnp.argmax(logits, -1))
    greedy = gen(setup, GenerationStep("tok_a", steps=4, temperature=0.0))["tok_a"]
    top1 = gen(setup, GenerationStep("tok_a", steps=4, top_k=1), seed=7)["tok_a"]
    np.testing.assert_array_equal(greedy, top1)


@pytest.mark.parametrize("scheme", ["maskgit", "roar"])
def test_parallel_schemes_commit_the_scheduled_counts(setup, scheme):
    step = GenerationStep("tok_a", scheme=scheme, steps=4)
    out, hist = gen(setup, step, return_history=True)
    h = hist["tok_a"]
    np.testing.assert_array_equal(h["committed"], np.tile([[1], [4], [5], [6]], (1, B)))
    np.testing.assert_array_equal(h["committed"], h["scheduled"])
    assert h["all_known"] and out["tok_a"].shape == (B, 16) and out["tok_a"].dtype == jnp.int32
    assert int(out["tok_a"].min()) >= 0 and int(out["tok_a"].max()) < 24


def test_ar_kv_cache_equals_recompute_and_stops_at_eos(setup):
    outs = {}
    for scheme in ("ar", "ar_nocache"):
        step = GenerationStep("cap", scheme=scheme, temperature=0.0)
        outs[scheme] = np.asarray(gen(setup, step, eos_id=None)["cap"])
    np.testing.assert_array_equal(outs["ar"], outs["ar_nocache"])
    assert (outs["ar"] > 0).all() and (outs["ar"] != 4).all()  # pad and S_0 are never drawn
    # make a token greedy decoding emits at position 3 of row 0 the eos: rows end there
    eos = int(outs["ar"][0, 3])
    cut = np.asarray(gen(setup, GenerationStep("cap", temperature=0.0), eos_id=eos)["cap"])
    for row, full in zip(cut, outs["ar"], strict=True):
        stop = int(np.argmax(full == eos)) if (full == eos).any() else len(full)
        np.testing.assert_array_equal(row[:stop], full[:stop])
        assert (row[stop:] == 0).all()
    assert (cut[0, 3:] == 0).all()


def test_guidance_scale_one_is_no_guidance_and_other_scales_change_samples(setup):
    plain = gen(setup, GenerationStep("tok_a", steps=4))["tok_a"]
    # the full guided path with one condition set of weight 1: uncond + 1 * (cond - uncond)
    full = gen(setup, GenerationStep("tok_a", steps=4, guidance=[(("rgb", "tok_b"), 1.0)]))
    np.testing.assert_array_equal(plain, full["tok_a"])
    guided = gen(setup, GenerationStep("tok_a", steps=4, guidance=3.0))["tok_a"]
    assert (np.asarray(guided) != np.asarray(plain)).any()
    ar_plain = gen(setup, GenerationStep("cap", temperature=0.0), eos_id=None)["cap"]
    ar_guided = gen(setup, GenerationStep("cap", temperature=0.0, guidance=4.0), eos_id=None)
    assert (np.asarray(ar_guided["cap"]) != np.asarray(ar_plain)).any()


def test_seed_reproducibility(setup):
    steps = [GenerationStep("tok_a", steps=3), GenerationStep("cap")]
    a, b, c = (gen(setup, steps, seed=s) for s in (5, 5, 6))
    for name in ("tok_a", "cap"):
        np.testing.assert_array_equal(a[name], b[name])
        assert (np.asarray(a[name]) != np.asarray(c[name])).any()


def test_editing_keeps_known_tokens_and_conditioning(setup):
    _, _, cond = setup
    rng = np.random.default_rng(2)
    known = rng.random((B, 16)) < 0.5
    out, hist = gen(setup, GenerationStep("tok_b", steps=2), known_masks={"tok_b": known},
                    return_history=True)  # fmt: skip
    given = cond["tok_b"].reshape(B, 16)
    np.testing.assert_array_equal(np.asarray(out["tok_b"])[known], given[known])
    assert (np.asarray(out["tok_b"])[~known] != given[~known]).any()
    np.testing.assert_array_equal(hist["tok_b"]["committed"].sum(0), (~known).sum(1))
    np.testing.assert_array_equal(out["rgb"], cond["rgb"])
    chained = gen(setup, [GenerationStep("tok_a", steps=2), GenerationStep("cap")])
    np.testing.assert_array_equal(chained["tok_b"], given)
    np.testing.assert_array_equal(chained["rgb"], cond["rgb"])


def test_chain_feeds_earlier_targets(setup):
    _, _, cond = setup
    chain, hist = gen(setup, [GenerationStep("tok_a", steps=2), "cap"], return_history=True)
    assert hist["cap"]["conditioning"] == ("rgb", "tok_a", "tok_b")
    # a target's draws depend on seed, name and inputs only: alone, with the chain's tok_a
    alone = gen(setup, "cap", cond={**cond, "tok_a": chain["tok_a"]})
    np.testing.assert_array_equal(alone["cap"], chain["cap"])
    other = (np.asarray(chain["tok_a"]) + 1) % 24
    changed = gen(setup, "cap", cond={**cond, "tok_a": other})
    assert (np.asarray(changed["cap"]) != np.asarray(chain["cap"])).any()


def test_empty_context_ignores_padding_content(setup):
    """With every encoder slot masked (unconditional), the decoder output must not depend on
    what fills the padding (cross-attention over no keys adds nothing)."""
    model, variables, _ = setup
    batch = example_batch(REG, 2, 6, 5)
    batch["enc_mask"][:] = False
    batch["dec_modality"][:] = REG.index("tok_a")
    apply = jax.jit(model.apply)
    first = apply(variables, batch)
    batch["enc_tokens"][:] = 7
    batch["enc_modality"][:] = REG.index("tok_b")
    batch["enc_positions"][:] = np.arange(6) % 4
    second = apply(variables, batch)
    assert np.isfinite(np.asarray(first)).all()
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    "schedule, kw, match",
    [
        ("nope", {}, "'nope' is not in the registry"),
        ("rgb", {}, "'rgb' is a pixels modality"),
        (GenerationStep("tok_a", steps=17), {}, "steps 17 > its 16 tokens"),
        (GenerationStep("cap", scheme="maskgit"), {}, "'cap' is a sequence"),
        (GenerationStep("tok_a", scheme="ar"), {}, "'tok_a' is image tokens"),
        ("tok_b", {}, "pass known_masks"),
        ("tok_a", {"cond": {"tok_b": np.zeros((B, 15), np.int32)}}, "'tok_b': image tokens"),
        ("tok_a", {"cond": {"tok_b": np.zeros((B, 16), np.float32)}}, "must be integers"),
        ("tok_a", {"cond": {"tok_b": np.full((B, 16), 32)}}, r"lie in \[0, 32\)"),
        ("tok_a", {"cond": {"rgb": np.full((B, 8, 8, 3), 2.0)}}, "'rgb': pixels must lie"),
        ("tok_a", {"cond": {"rgb": np.zeros((B, 8, 8), np.float32)}}, "'rgb': pixels must"),
        ("tok_a", {"cond": {"cap": np.ones((B, 11), np.int32)}}, "max_length 10"),
        ("tok_a", {"cond": {"what": np.ones((B, 3), np.int32)}}, "'what' is not a modality"),
        ("tok_a", {"cond": {}}, "pass batch_size"),
        ("tok_a", {"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ("tok_a", {"cond": {"tok_b": np.zeros((0, 16), np.int32)}}, "'tok_b' has batch size 0"),
        ("tok_a", {"cond": {"tok_b": [[1] * 16, [1] * 15]}}, r"'tok_b': rows of .*\[16, 15\]"),
        ("tok_a", {"cond": {"cap": ["a red cube"] * B}}, "'cap'.*TextTokenizer"),
        (GenerationStep("tok_a", guidance=[("cap", 2.0)]), {}, r"\['cap'\] that are not"),
        (["tok_a", "tok_a"], {}, "appears twice"),
        (["tok_a", "cap"], {"eos_id": 40}, "eos_id 40 is outside 'cap'"),
        ("cap", {"eos_id": 4}, "must differ"),
        ("tok_a", {"known_masks": {"tok_b": np.ones((B, 16), bool)}}, "must name a target"),
    ],
)
def test_bad_inputs_raise(setup, schedule, kw, match):
    with pytest.raises(ValueError, match=match):
        gen(setup, schedule, **kw)


def test_bad_step_fields_raise():
    with pytest.raises(ValueError, match="scheme must be one of"):
        GenerationStep("tok_a", scheme="diffusion")
    with pytest.raises(ValueError, match="top_p"):
        GenerationStep("tok_a", top_p=0.0)
    with pytest.raises(ValueError, match="temperature_schedule"):
        GenerationStep("tok_a", temperature_schedule="cubic")
    with pytest.raises(ValueError, match="guidance"):
        GenerationStep("tok_a", guidance="strong")


# -- scoring: image_token_log_probs against the training forward -------------------------
def scoring_setup(setup):
    """(model, variables, conditioning {cap, tok_b}, target tok_a tokens [B, 16])."""
    model, variables, base = setup
    rng = np.random.default_rng(1)
    caps = np.zeros((B, 10), np.int32)
    for i, n in enumerate((3, 10, 6)):
        caps[i, :n] = rng.integers(1, 40, n)
    cond = {"cap": caps, "tok_b": np.asarray(base["tok_b"]).reshape(B, 16)}
    return model, variables, cond, rng.integers(0, 24, (B, 16))


def test_log_probs_match_the_training_forward(setup):
    """The same numbers from the model's __call__ on a masked batch built by hand, with the
    encoder slots in another order (tok_b first, then the caption's real tokens only)."""
    model, variables, cond, target = scoring_setup(setup)
    got = image_token_log_probs(model, variables, REG, cond, "tok_a", target.reshape(B, 4, 4))
    lengths = (cond["cap"] != 0).sum(1)
    e = 16 + 10
    batch = example_batch(REG, B, e, 16)
    for i in range(B):
        n = int(lengths[i])
        batch["enc_tokens"][i] = np.r_[cond["tok_b"][i], cond["cap"][i, :n], np.zeros(10 - n)]
        batch["enc_modality"][i] = [REG.index("tok_b")] * 16 + [REG.index("cap")] * 10
        batch["enc_positions"][i] = np.r_[np.arange(16), np.arange(10)]
        batch["enc_mask"][i] = np.arange(e) < 16 + n
    batch["pixels_rgb"][:] = 0.0
    batch["dec_input_tokens"][:] = 0
    batch["dec_target_tokens"][:] = target
    batch["dec_modality"][:] = REG.index("tok_a")
    batch["dec_positions"][:] = np.arange(16)
    batch["dec_mask"][:] = True
    logits = np.asarray(jax.jit(model.apply)(variables, batch), np.float64)[..., :24]
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    want = np.take_along_axis(logp, target[..., None], -1)[..., 0]
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert got.shape == (B, 16) and np.all(got < 0)


def test_probabilities_of_all_tokens_sum_to_one_and_follow_the_condition(setup):
    model, variables, cond, _ = scoring_setup(setup)
    one = {k: np.repeat(v[:1], 24, axis=0) for k, v in cond.items()}
    every = np.repeat(np.arange(24)[:, None], 16, axis=1)  # row v: token v everywhere
    logp = image_token_log_probs(model, variables, REG, one, "tok_a", every)
    np.testing.assert_allclose(np.exp(logp).sum(0), 1.0, atol=1e-5)
    other = {k: np.repeat(v[1:2], 24, axis=0) for k, v in cond.items()}
    moved = image_token_log_probs(model, variables, REG, other, "tok_a", every)
    assert np.abs(logp - moved).max() > 1e-3


@pytest.mark.parametrize(
    "target, tokens, match",
    [
        ("cap", np.zeros((B, 16), np.int32), "target 'cap' is not one of"),
        ("nope", np.zeros((B, 16), np.int32), "target 'nope' is not one of"),
        ("tok_b", np.zeros((B, 16), np.int32), "cannot also be conditioning"),
        ("tok_a", np.full((B, 16), 24), r"lie in \[0, 24\)"),
        ("tok_a", np.zeros((B, 15), np.int32), "'tok_a': image tokens"),
        ("tok_a", np.zeros((B + 1, 16), np.int32), "batch"),
        ("tok_a", np.zeros((0, 16), np.int32), "'tok_a' has batch size 0"),
        ("tok_a", [[0] * 16, [0] * 15, [0] * 16], r"'tok_a': rows of .*\[16, 15, 16\]"),
    ],
)
def test_scoring_bad_input_raises(setup, target, tokens, match):
    model, variables, cond, _ = scoring_setup(setup)
    with pytest.raises(ValueError, match=match):
        image_token_log_probs(model, variables, REG, cond, target, tokens)
