"""ml-4m's generation and masking conventions, the options of `GenerationStep` and
`FourMMasking`, against numpy re-statements of ml-4m's rules written here from its code
(fourm/utils/generation.py, fourm/models/generate.py, fourm/data/masking.py): token and
temperature schedules, filter order, MaskGIT confidence, ROAR decoding, guidance variants,
clamped Dirichlet budgets and independent span drops; and a whole generation run with every
ml-4m option, step by step, against a hand-built forward of the same model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.fourm import build_registry, example_batch
from mmjax.fourm.generation.generate import GenerationStep, _guidance_inputs, generate
from mmjax.fourm.generation.ml4m_schedules import (
    ml4m_commit_counts,
    ml4m_token_schedule,
    token_fraction_temperatures,
)
from mmjax.fourm.generation.sampling import (
    commit_counts,
    filtered_logits,
    sample_with_probs,
    temperature_schedule,
)
from mmjax.fourm.masking.masker import FourMMasking
from mmjax.fourm.masking.mixtures import sample_budgets
from mmjax.fourm.masking.ml4m_budgets import clamped_budgets, sample_budgets_clamped
from mmjax.fourm.masking.ml4m_spans import ml4m_span_mask
from tests.test_fourm_generate import tiny_model

# ------------------------------------------------------------ ml-4m's rules, in numpy


def ref_cosine_schedule(steps, total):
    """fourm.utils.generation.cosine_schedule."""
    masked = np.array([0.5 * (1 + np.cos(np.pi * i / steps)) for i in range(steps)])
    counts = [round(total * d) for d in masked[:-1] - masked[1:]]
    return np.array([*counts, total - sum(counts)])


def ref_linear_schedule(steps, total):
    """fourm.utils.generation.linear_schedule (trailing zero steps trimmed)."""
    counts = np.sort(np.diff(np.linspace(0, total, steps + 1, dtype=int)))[::-1]
    return np.trim_zeros(counts, "b")


def ref_linear_temps(temp, counts):
    left = (counts.sum() - np.cumsum(counts)) / counts.sum()
    return np.clip(np.r_[temp, temp * left[:-1]], 1e-9, None)


def ref_onex_temps(max_t, min_t, counts, power):
    y = 1 / np.linspace(1, 100, counts.sum()) ** power
    y = (y - y.min()) / (y - y.min()).max()
    done = np.cumsum(counts) / counts.sum()
    shape = [(1 - d) * v for v, d in zip(y, done, strict=False)]
    return np.clip(min_t + (max_t - min_t) * np.array(shape), 1e-9, None)


def ref_filter(logits, top_k, top_p):
    """GenerationSampler.top_k_top_p_filtering on raw logits [R, V] (top_p 0 or 1 = off)."""
    x = np.array(logits, np.float64)
    if top_k > 0:
        kth = np.sort(x, -1)[:, -top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    if 0 < top_p < 1:
        order = np.argsort(-x, -1, kind="stable")
        sx = np.take_along_axis(x, order, -1)
        e = np.exp(sx - sx[:, :1])
        cum = np.cumsum(e / e.sum(-1, keepdims=True), -1)
        drop = np.zeros_like(cum, bool)
        drop[:, 1:] = cum[:, :-1] > top_p  # shifted: the first token past p stays
        np.put_along_axis(x, order, np.where(drop, -np.inf, sx), -1)
    return x


def ref_probs(logits, temp, top_k, top_p):
    """softmax(filtered raw logits / temperature): what ml-4m samples from and ranks by."""
    z = ref_filter(logits, top_k, top_p) / temp
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ref_span_mask(seq, gen, input_budget, budget_tokens, sentinels, eos):
    """UnifiedMasking.sequence_mask + simple_span_masking, drawing from `gen` where ml-4m
    draws (keep: random.uniform, drops: torch.rand, the cut: np.random.randint)."""

    def spans(tokens, keep_prob):
        inp, tgt, prev, count = [], [], False, 0
        draws = gen.random(len(tokens)) if keep_prob > 0 else np.ones(len(tokens))
        for tok, r in zip(tokens, draws, strict=True):
            if r > keep_prob:
                if not prev:
                    inp.append(sentinels[count])
                    tgt.append(sentinels[count])
                    count += 1
                prev = True
                tgt.append(tok)
            else:
                prev = False
                inp.append(tok)
        return inp, [*tgt, sentinels[count]]

    tokens = [*seq, eos]
    if input_budget == 0:
        inp, tgt = [], spans(tokens, 0.0)[1]
    else:
        keep = gen.random()
        inp, tgt = spans(tokens, keep)
        while len(inp) > input_budget:
            keep *= 0.9
            inp, tgt = spans(tokens, keep)
    if len(tgt) > budget_tokens:
        at = [i for i, t in enumerate(tgt) if t in sentinels]
        start = at[int(gen.integers(max(1, len(at) - 1)))]
        if len(tgt) - start >= budget_tokens:
            tgt = tgt[start : start + budget_tokens]
        else:
            tgt = tgt[next(i for i in at if len(tgt) - i <= budget_tokens) :]
    return inp, tgt


REF_SCHEDULES = {"ml4m_cosine": ref_cosine_schedule, "ml4m_linear": ref_linear_schedule}


def ref_budgets(p, extra, total, maxima):
    """UnifiedMasking.input_token_budget for a Dirichlet draw p and extra draws [k, M]."""
    b = np.floor(p * total).astype(int)
    left = total - b.sum()
    b += np.bincount(np.argmax(extra[:left], -1), minlength=len(p))
    return np.minimum(b, maxima)


# ------------------------------------------------------------ schedules


def test_token_schedules_256_in_8_and_reference():
    ml4m = ml4m_token_schedule(256, 8, "ml4m_cosine")
    np.testing.assert_array_equal(ml4m, [10, 28, 42, 49, 49, 42, 28, 8])
    np.testing.assert_array_equal(commit_counts(256, 8, "cosine"), [5, 14, 24, 32, 39, 44, 48, 50])
    for total in (3, 16, 49, 196, 256, 1000):
        for steps in (1, 2, 4, 8, 25):
            if steps > total:
                continue
            for kind, ref in REF_SCHEDULES.items():
                want = ref(steps, total)
                if (want < 0).any():  # ml-4m would ask for a negative count
                    with pytest.raises(ValueError, match="ml4m_cosine"):
                        ml4m_token_schedule(total, steps, kind)
                    continue
                got = ml4m_token_schedule(total, steps, kind)
                np.testing.assert_array_equal(got[: len(want)], want, err_msg=f"{kind} {total}")
                assert (got[len(want) :] == 0).all()
    # 10 in 4: ml-4m's linear is [3, 3, 2, 2] (largest first), mmjax's [2, 3, 3, 2]
    np.testing.assert_array_equal(ml4m_token_schedule(10, 4, "ml4m_linear"), [3, 3, 2, 2])
    np.testing.assert_array_equal(commit_counts(10, 4, "linear"), [2, 3, 3, 2])
    # per row (editing): each row's own count; 3 in 5 steps: ml-4m trims, here zeros follow
    got = ml4m_commit_counts([16, 3], 5, "ml4m_linear")
    np.testing.assert_array_equal(got[:, 0], ref_linear_schedule(5, 16))
    np.testing.assert_array_equal(got[:, 1], [1, 1, 1, 0, 0])


def test_temperatures_decay_with_tokens_left():
    for total, steps in ((256, 8), (196, 25), (16, 4), (49, 12)):
        counts = ref_cosine_schedule(steps, total)
        lin = token_fraction_temperatures(3.0, counts, "linear")[:, 0]
        np.testing.assert_allclose(lin, ref_linear_temps(3.0, counts), rtol=1e-6)
        onex = token_fraction_temperatures(6.0, counts, "onex", 0.5, 0.5)[:, 0]
        np.testing.assert_allclose(onex, ref_onex_temps(6.0, 0.5, counts, 0.5), rtol=1e-5)
        const = token_fraction_temperatures(2.0, counts, "constant")[:, 0]
        np.testing.assert_allclose(const, 2.0)
    # mmjax's linear decays with the step index: another curve for the same schedule
    counts = ref_cosine_schedule(8, 256)
    mmjax = temperature_schedule(3.0, 8, "linear")
    assert np.abs(mmjax - ref_linear_temps(3.0, counts)).max() > 0.3


@jax.jit
def _filters(key, x, t, k, p):
    """ml-4m's order, mmjax's order, and a draw in ml-4m's order: one compile."""
    first = filtered_logits(x, t, k, p, filter_first=True)
    return first, filtered_logits(x, t, k, p), sample_with_probs(key, x, t, k, p, True)


def test_filter_first_keeps_ml4m_set_and_reports_its_probabilities():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 30)).astype(np.float32) * 2
    differs = False
    for k, p, t in ((0, 0.7, 0.5), (5, 1.0, 2.0), (4, 0.9, 1.5), (0, 0.3, 3.0)):
        want = ref_probs(logits, t, k, p)
        first, mine, (drawn, probs) = _filters(jax.random.key(1), jnp.asarray(logits), t, k, p)
        np.testing.assert_array_equal(np.isfinite(first), want > 0, err_msg=f"{k} {p} {t}")
        differs |= bool((np.isfinite(mine) != (want > 0)).any())
        want_drawn = np.take_along_axis(want, np.asarray(drawn)[:, None], 1)[:, 0]
        assert (want_drawn > 0).all()
        np.testing.assert_allclose(probs, want_drawn, atol=1e-6)
    assert differs  # dividing first keeps another top-p set for some rows


# ------------------------------------------------------------ masking


def test_span_rule_matches_reference_draw_for_draw():
    sentinels = list(range(4, 104))
    for seed in range(200):
        r = np.random.default_rng(seed)
        n = int(r.integers(1, 30))
        seq = r.integers(110, 200, n)
        ib, tb = int(r.integers(0, n + 3)), int(r.integers(0, n + 4))
        inp, tgt = ml4m_span_mask(
            seq, np.random.default_rng(seed + 1000), input_budget=ib, target_budget=tb,
            sentinel_ids=sentinels, eos_id=1,
        )  # fmt: skip
        want = ref_span_mask(seq, np.random.default_rng(seed + 1000), ib, tb + 1, sentinels, 1)
        np.testing.assert_array_equal(inp, want[0], err_msg=f"seed {seed}")
        np.testing.assert_array_equal(tgt, want[1], err_msg=f"seed {seed}")
        assert len(inp) <= ib and len(tgt) - 1 <= tb
    # the doc example: c d and eos dropped; the target ends with the next sentinel, no eos
    seq = np.array([10, 11, 12, 13, 14])
    inp, tgt = ml4m_span_mask(seq, np.random.default_rng(3), input_budget=0, target_budget=9,
                              sentinel_ids=[4, 5], eos_id=1)  # fmt: skip
    np.testing.assert_array_equal(tgt, [4, 10, 11, 12, 13, 14, 1, 5])
    assert len(inp) == 0


def test_budget_rule_core_and_distribution():
    rng = np.random.default_rng(0)
    for _ in range(100):
        m = int(rng.integers(2, 7))
        p, extra = rng.dirichlet(np.full(m, 0.3)), rng.dirichlet(np.full(m, 0.3), size=m + 2)
        total, maxima = int(rng.integers(1, 300)), rng.integers(0, 200, m)
        left = total - int(np.floor(p * total).sum())
        got = clamped_budgets(p, np.argmax(extra[:left], -1), total, maxima)
        np.testing.assert_array_equal(got, ref_budgets(p, extra, total, maxima))
    # small alphas: one modality takes almost everything, is clamped, the rest is padding
    alphas, sizes, total, draws = np.full(4, 0.05), np.array([16, 16, 4, 10]), 24, 600
    mine = np.array([sample_budgets_clamped(rng, alphas, total, sizes) for _ in range(draws)])
    ref = []
    for _ in range(draws):
        p = rng.dirichlet(alphas)
        extra = rng.dirichlet(alphas, size=total)
        ref.append(ref_budgets(p, extra, total, sizes))
    ref = np.array(ref)
    assert (mine <= sizes).all() and (mine.sum(1) <= total).all()
    padded = lambda b: np.mean(b.sum(1) < total)
    dominant = lambda b: np.mean(b.max(1) >= 0.9 * b.sum(1))  # one modality, give or take
    for stat in (padded, dominant, lambda b: np.mean((b > 0).sum(1) == 1)):
        assert abs(stat(mine) - stat(ref)) < 0.07
    assert padded(mine) > 0.8 and dominant(mine) > 0.5
    np.testing.assert_allclose(mine.mean(0), ref.mean(0), atol=1.2)
    # mmjax's default fills the total whenever the room allows
    fill = np.array([sample_budgets(rng, alphas, total, sizes) for _ in range(200)])
    assert (fill.sum(1) == total).all()


MREG = build_registry({
    "rgb": dict(kind="pixels", grid=(2, 2), patch_size=4, channels=3),
    "tok_a": dict(kind="image_tokens", vocab_size=24, grid=(4, 4)),
    "tok_b": dict(kind="image_tokens", vocab_size=32, grid=(4, 4)),
    "cap": dict(kind="sequence", vocab_size=200, max_length=12),
})  # fmt: skip


def test_masker_ml4m_rules():
    rng = np.random.default_rng(0)
    mix = [dict(input_alphas=dict.fromkeys(MREG.names, 0.1),
                target_alphas={"tok_a": 0.1, "tok_b": 0.1, "cap": 0.1})]  # fmt: skip
    kw = dict(sentinel_ids=list(range(4, 40)), eos_id=1)
    ml4m = FourMMasking(MREG, 24, 24, mix, budget_rule="ml4m", span_rule="ml4m", **kw)
    sizes = {n: MREG[n].num_tokens for n in MREG.names}
    padded = dominant = ends = 0
    for i in range(150):
        cap = np.zeros(12, np.int64)
        cap[: 3 + i % 8] = rng.integers(50, 200, 3 + i % 8)
        ex = {"rgb": rng.random((8, 8, 3)).astype(np.float32), "cap": cap,
              "tok_a": rng.integers(0, 24, 16), "tok_b": rng.integers(0, 32, 16)}  # fmt: skip
        out = ml4m(ex, np.random.default_rng(i))
        mods = np.where(out["enc_mask"], out["enc_modality"], -1)
        used = [int((mods == MREG.index(n)).sum()) for n in MREG.names]
        assert all(u <= sizes[n] for u, n in zip(used, MREG.names, strict=True))
        padded += out["enc_mask"].sum() < 24
        dominant += max(used) >= 0.8 * sum(used)  # one modality, give or take a token
        sel = out["dec_mask"] & (out["dec_modality"] == MREG.index("cap"))
        if sel.any():  # a caption target starts at a sentinel; uncut, it ends with the next
            tgt = np.r_[out["dec_input_tokens"][sel][:1], out["dec_target_tokens"][sel]]
            assert 4 <= tgt[0] < 40 and set(tgt) <= set(range(4, 40)) | set(cap) | {1}
            ends += 4 <= tgt[-1] < 40 and 1 in tgt
    assert padded > 100 and dominant > 50 and ends > 10
    with pytest.raises(ValueError, match="budget_rule must be one of"):
        FourMMasking(MREG, 24, 24, mix, budget_rule="floor", **kw)


# ------------------------------------------------------------ a whole generation run

REG = build_registry({
    "rgb": dict(kind="pixels", grid=(2, 2), patch_size=4, channels=3),
    "tok_a": dict(kind="image_tokens", vocab_size=24, grid=(4, 4)),
    "tok_b": dict(kind="image_tokens", vocab_size=32, grid=(4, 4)),
    "cap": dict(kind="sequence", vocab_size=40, max_length=10),
})  # fmt: skip
B, SENTINEL = 2, 4  # the start sentinel: ml-4m's empty text input in guidance


@pytest.fixture(scope="module")
def run():
    """A tiny 4M (token embeddings scaled so outputs follow the inputs), caption + rgb
    conditioning, tok_a by MaskGIT then tok_b by ROAR, both with every ml-4m option and
    guidance 2."""
    model, variables = tiny_model(REG, width=32, decoder_depth=1)
    rng = np.random.default_rng(0)
    cap = np.zeros((B, 10), np.int32)
    cap[0, :5], cap[1, :8] = rng.integers(5, 40, 5), rng.integers(5, 40, 8)
    cond = {"rgb": rng.random((B, 8, 8, 3)).astype(np.float32), "cap": cap}
    steps = [
        GenerationStep.ml4m("tok_a", "maskgit", steps=4, temperature=2.0,
                            temperature_schedule="linear", top_p=0.8, guidance=2.0),
        GenerationStep.ml4m("tok_b", "roar", steps=4, temperature=1.5, temperature_schedule="onex",
                            temperature_min=0.5, top_k=6, guidance=2.0),
    ]  # fmt: skip
    out, hist = generate(model, variables, REG, cond, steps, jax.random.key(3), return_history=True)
    return model, variables, cond, out, hist


_APPLY = {}


def APPLY(model):
    """model.apply, jitted once per model."""
    return _APPLY.setdefault(id(model), jax.jit(model.apply))


def ref_logits(model, variables, cond, known, target, dec_mask, keep_cond):
    """Decoder logits [B, 16, V] of `target` from a hand-built masked batch: the encoder
    holds the caption (or, dropped, one sentinel at position 0), the rgb patches unless
    dropped, every other earlier target (`known`: name -> (tokens, mask)); the target's
    own committed tokens; slots in another order than generate's."""
    e, rows = 4 + 10 + 16 + 16, []
    for b in range(B):
        slots = []  # (token, modality, position)
        for name, (tok, mask) in known.items():
            slots += [(tok[b, i], REG.index(name), i) for i in range(16) if mask[b, i]]
        length = int((cond["cap"][b] != 0).sum())
        if keep_cond:
            slots += [(cond["cap"][b, i], REG.index("cap"), i) for i in range(length)]
            slots += [(0, REG.index("rgb"), i) for i in range(4)]
        else:
            slots += [(SENTINEL, REG.index("cap"), 0)]
        rows.append(slots[::-1])
    batch = example_batch(REG, B, e, 16)
    for b, slots in enumerate(rows):
        n = len(slots)
        columns = np.array(slots).T  # tokens, modalities, positions
        for f, col in zip(("enc_tokens", "enc_modality", "enc_positions"), columns, strict=True):
            batch[f][b] = 0
            batch[f][b, :n] = col
        batch["enc_mask"][b] = np.arange(e) < n
    batch["pixels_rgb"] = cond["rgb"]
    batch["dec_input_tokens"][:] = 0
    batch["dec_modality"][:] = REG.index(target)
    batch["dec_positions"][:] = np.arange(16)
    batch["dec_mask"] = dec_mask
    logits = np.asarray(APPLY(model)(variables, batch), np.float64)
    return logits[..., : REG[target].vocab_size]


def check_rounds(run, target, before, schedule, temps, decoded_rule, top_k, top_p, known):
    """Every round of `target`: counts, temperatures, filtering and commits by ml-4m's rule."""
    model, variables, cond, out, hist = run
    h = hist[target]
    np.testing.assert_array_equal(h["committed"], np.tile(schedule[:, None], (1, B)))
    np.testing.assert_allclose(h["temperatures"], np.tile(temps[:, None], (1, B)), rtol=1e-5)
    tokens, mask = before
    for t in range(len(schedule)):
        new = h["known"][t] & ~mask
        decoded = decoded_rule(mask, new)
        guided = 2.0 * ref_logits(model, variables, cond, known | {target: (tokens, mask)},
                                  target, decoded, True)  # fmt: skip
        guided -= ref_logits(model, variables, cond, known | {target: (tokens, mask)},
                             target, decoded, False)  # fmt: skip
        probs = ref_probs(guided.reshape(-1, guided.shape[-1]), temps[t], top_k, top_p)
        probs = probs.reshape(guided.shape)
        p_drawn = np.take_along_axis(probs, h["drawn"][t][..., None], -1)[..., 0]
        assert (probs[decoded] == 0).any(), "the filter keeps every token: the check is void"
        assert (p_drawn[decoded] > 0).all(), f"{target} round {t}: a filtered token was drawn"
        np.testing.assert_allclose(h["draw_probs"][t][decoded], p_drawn[decoded], atol=2e-4)
        np.testing.assert_array_equal(h["tokens"][t][new], h["drawn"][t][new])
        np.testing.assert_array_equal(h["tokens"][t][mask], tokens[mask])
        tokens, mask = h["tokens"][t], h["known"][t]
        yield t, new, decoded, p_drawn
    np.testing.assert_array_equal(out[target], tokens)


def test_maskgit_with_ml4m_options_follows_the_reference(run):
    hist = run[4]
    schedule = ref_cosine_schedule(4, 16)  # [2, 6, 6, 2]; mmjax's cosine: [1, 4, 5, 6]
    temps = ref_linear_temps(2.0, schedule)
    start = (np.zeros((B, 16), np.int32), np.zeros((B, 16), bool))
    every_masked = lambda mask, new: ~mask
    rounds = check_rounds(run, "tok_a", start, schedule, temps, every_masked, 0, 0.8, {})
    for _, new, decoded, p in rounds:  # the committed draws are the most probable ones
        for b in range(B):
            assert p[b][new[b]].min() >= p[b][decoded[b] & ~new[b]].max(initial=0) - 1e-4
    assert (hist["tok_a"]["committed"][:, 0] != commit_counts(16, 4)).any()  # mmjax's: 1 4 5 6
    assert hist["tok_a"]["variants"] == (("cap", "rgb"), ())


def test_roar_with_ml4m_options_decodes_only_the_chosen(run):
    model, variables, cond, out, hist = run
    schedule = ref_linear_schedule(4, 16)  # ROAR: linear, [4, 4, 4, 4]
    temps = ref_onex_temps(1.5, 0.5, schedule, 0.5)
    known = {"tok_a": (np.asarray(out["tok_a"]), np.ones((B, 16), bool))}
    start = (np.zeros((B, 16), np.int32), np.zeros((B, 16), bool))
    chosen = lambda mask, new: new
    rounds = check_rounds(run, "tok_b", start, schedule, temps, chosen, 6, 1.0, known)
    for t, new, _, _ in rounds:
        if t == 0:  # decoding every masked position instead gives other logits
            only = ref_logits(model, variables, cond, known, "tok_b", new, True)
            all_masked = np.ones((B, 16), bool)
            every = ref_logits(model, variables, cond, known, "tok_b", all_masked, True)
            assert np.abs(only - every)[new].max() > 1e-3
    # guidance drops the given conditions only: the generated tok_a stays in every variant
    assert hist["tok_b"]["variants"] == (("cap", "rgb", "tok_a"), ("tok_a",))


def test_guidance_variants_and_the_text_sentinel(run):
    _, _, cond, out, _ = run
    given = {"cap": jnp.asarray(cond["cap"]), "rgb": cond["rgb"], "tok_a": out["tok_a"]}
    names = ["cap", "rgb", "tok_a"]
    args = (given, names, {"cap", "rgb"}, B, SENTINEL)  # tok_a: generated in the chain
    default = GenerationStep("tok_b", guidance=2.0)
    _, _, variants, _ = _guidance_inputs(REG, default, *args)
    assert variants == (("cap", "rgb", "tok_a"), ())  # every available modality dropped
    ml4m = GenerationStep.ml4m("tok_b", guidance=2.0)
    blocks, masks, variants, weights = _guidance_inputs(REG, ml4m, *args)
    assert variants == (("cap", "rgb", "tok_a"), ("tok_a",))
    np.testing.assert_allclose(weights, [2.0, -1.0])
    toks, masks = np.asarray(blocks["variant_tokens"]), np.asarray(masks)
    cap = slice(0, 10)  # the caption's block comes first: registry order
    np.testing.assert_array_equal(toks[0][:, cap], cond["cap"])
    one_slot = np.broadcast_to(np.arange(10) == 0, (B, 10))  # one slot left
    np.testing.assert_array_equal(masks[1][:, cap], one_slot)
    np.testing.assert_array_equal(toks[1][:, 0], SENTINEL)
    with pytest.raises(ValueError, match="confidence must be one of"):
        GenerationStep("tok_a", confidence="entropy")
    with pytest.raises(ValueError, match="temperature_decay must be one of"):
        GenerationStep("tok_a", temperature_decay="time")


@pytest.mark.slow
def test_default_options_give_another_run(run):
    """The same chain with mmjax's defaults: other counts, other tokens."""
    model, variables, cond, out, _ = run
    plain = [
        GenerationStep("tok_a", "maskgit", steps=4, temperature=2.0, top_p=0.8, guidance=2.0),
        GenerationStep("tok_b", "roar", steps=4, temperature=1.5, top_k=6, guidance=2.0),
    ]
    default, hist = generate(
        model, variables, REG, cond, plain, jax.random.key(3), return_history=True
    )
    np.testing.assert_array_equal(hist["tok_a"]["committed"][:, 0], [1, 4, 5, 6])
    for name in ("tok_a", "tok_b"):
        assert (np.asarray(default[name]) != np.asarray(out[name])).any()
    assert hist["tok_b"]["variants"] == (("cap", "rgb", "tok_a"), ())
