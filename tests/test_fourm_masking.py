"""4M host-side masking: Dirichlet budgets, mixtures, span masking and the FourMMasking
transform, checked against numpy maths (Dirichlet moments), round trips and the example's own
tokens."""

import pickle

import numpy as np
import pytest

from mmjax.data.scenes.constants import IMAGE_MODALITIES
from mmjax.fourm.masking.masker import FourMMasking
from mmjax.fourm.masking.mixtures import (
    MIXTURES,
    Mixture,
    build_mixture,
    caption_biased,
    rgb_first,
    rgb_to_all,
    sample_budgets,
    sample_dirichlet,
)
from mmjax.fourm.masking.spans import apply_span_mask, crop_target, span_mask, unmask
from mmjax.fourm.modalities import build_registry, fourm7_modalities

SENTINELS = list(range(4, 104))
EOS = 1
REG = build_registry(fourm7_modalities())  # 8x8 grids, 64x64 rgb, caption 96, boxes 40, meta 16
SEQS = {"caption": 96, "boxes": 40, "metadata": 16}


def make_example(rng, drop=()):
    """Random tokens for every modality; sequences padded with 0 to max_length."""
    ex = {f"tok_{m}": rng.integers(0, 1000, (8, 8)) for m in IMAGE_MODALITIES}
    ex["tok_depth"] = ex["tok_depth"].reshape(-1)  # both [h, w] and [h*w] are accepted
    ex["rgb"] = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for name, length in SEQS.items():
        n = int(rng.integers(0, length))  # max_length counts the eos
        ex[name] = np.zeros(length, np.int32)
        ex[name][:n] = rng.integers(200, 1000, n)
    return {k: v for k, v in ex.items() if k not in drop}


def masking(mixture="all_to_all_multi", e=128, t=128, **kw):
    return FourMMasking(REG, e, t, mixture, SENTINELS, EOS, **kw)


def parts(out, name, side):
    """The real entries of one modality on the encoder or decoder side, in order."""
    mod = out[f"{side}_modality"]
    sel = out[f"{side}_mask"] & (mod == REG.index(name))
    keys = ("tokens", "positions") if side == "enc" else ("input_tokens", "target_tokens")
    keys = (*keys, "positions") if side == "dec" else keys
    return [out[f"{side}_{k}"][sel] for k in keys]


# ---------------------------------------------------------------- Dirichlet budgets


def test_budgets_sum_exactly_and_respect_alpha0_caps_and_capacities():
    rng = np.random.default_rng(0)
    for _ in range(500):
        m = int(rng.integers(1, 8))
        alphas = rng.choice([0.0, 0.01, 0.5, 3.0], m)
        cap = rng.integers(0, 50, m)
        caps = rng.integers(0, 50, m) if rng.random() < 0.5 else None
        total = int(rng.integers(0, 200))
        b = sample_budgets(rng, alphas, total, cap, caps)
        room = np.minimum(cap, caps) if caps is not None else cap
        assert b.sum() == min(total, room[alphas > 0].sum())
        assert np.all(b >= 0) and np.all(b <= room) and np.all(b[alphas == 0] == 0)


def test_budget_proportions_follow_dirichlet_moments():
    rng = np.random.default_rng(1)
    alphas = np.array([0.5, 1.0, 2.0, 4.0])
    p = np.array([sample_budgets(rng, alphas, 10_000, [10**6] * 4) for _ in range(4000)]) / 1e4
    mean, a0 = alphas / alphas.sum(), alphas.sum()
    np.testing.assert_allclose(p.mean(0), mean, atol=0.015)
    np.testing.assert_allclose(p.var(0), mean * (1 - mean) / (a0 + 1), rtol=0.12)


def test_tiny_alphas_give_no_nan_and_the_right_winner_odds():
    rng = np.random.default_rng(2)
    alphas = np.array([0.01, 0.01, 0.02])
    p = np.array([sample_dirichlet(rng, alphas) for _ in range(4000)])
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(1), 1.0)
    # With tiny alphas one modality takes (nearly) everything, modality i with odds a_i / sum(a).
    wins = np.bincount(p.argmax(1), minlength=3) / len(p)
    np.testing.assert_allclose(wins, alphas / alphas.sum(), atol=0.03)
    for _ in range(300):
        b = sample_budgets(rng, [0.01] * 7, 100, [64, 64, 10, 5, 64, 40, 16])
        assert b.sum() == 100


# ---------------------------------------------------------------- mixtures


def test_presets_and_build_mixture():
    names = REG.names
    for name in MIXTURES:
        w, a_in, a_tg = build_mixture(name, REG).arrays()
        assert np.all(w > 0) and np.all(a_tg[:, names.index("rgb")] == 0)
    _, a_in, a_tg = rgb_to_all(REG).arrays()
    assert np.flatnonzero(a_in[0]).tolist() == [names.index("rgb")]
    assert np.count_nonzero(a_tg[0]) == len(names) - 1
    no_pixels = build_registry({k: v for k, v in fourm7_modalities().items() if k != "rgb"})
    _, a_in, _ = rgb_to_all(no_pixels).arrays()
    assert np.flatnonzero(a_in[0]).tolist() == [no_pixels.index("tok_rgb")]
    w, _, _ = build_mixture("all_to_all_multi", REG).arrays()
    assert np.allclose(w, 1.0) and len(w) == 4
    w, a_in, a_tg = caption_biased(REG).arrays()
    cap = names.index("caption")
    assert np.isclose(w[1] / w.sum(), 0.25) and np.flatnonzero(a_in[1]).tolist() == [cap]
    assert np.flatnonzero(a_tg[2]).tolist() == [cap] and a_in[2, cap] == 0
    w, a_in, a_tg = build_mixture("rgb_caption_biased", REG).arrays()
    np.testing.assert_allclose(w / w.sum(), [0.4, 0.2, 0.4])
    assert np.flatnonzero(a_in[0]).tolist() == [names.index("rgb")]  # the whole image in
    assert np.flatnonzero(a_in[1]).tolist() == [cap] and a_tg[1, cap] == 0
    assert np.all(a_in[2] == 0.5) and np.count_nonzero(a_tg[2]) == len(names) - 1
    w2, a_in2, a_tg2 = build_mixture("rgb_text_biased", REG).arrays()
    text = [names.index(n) for n in ("caption", "boxes")]
    np.testing.assert_array_equal(a_tg2[0, text], 1.5)  # only the text targets of rgb -> all
    a_tg2[0, text] = a_tg[0, text]
    for x, y in ((w2, w), (a_in2, a_in), (a_tg2, a_tg)):
        np.testing.assert_array_equal(x, y)
    w3, a_in3, a_tg3 = build_mixture("rgb_first", REG).arrays()
    np.testing.assert_allclose(w3 / w3.sum(), [0.6, 0.2, 0.2])  # only the weights differ
    for x, y in ((a_in3, a_in), (a_tg3, build_mixture("rgb_text_biased", REG).arrays()[2])):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="rgb_first takes 3 positive weights"):
        rgb_first(REG, (0.5, 0.5))
    cfg = [{"weight": 2, "input_alphas": {"caption": 1}, "target_alphas": {"tok_rgb": 1}}]
    mix = build_mixture(cfg, REG)
    assert isinstance(mix, Mixture) and build_mixture(mix, REG) is mix


@pytest.mark.parametrize(
    "component, match",
    [
        ({"input_alphas": {"foo": 1}, "target_alphas": {"tok_rgb": 1}}, "unknown modality 'foo'"),
        ({"input_alphas": {"tok_rgb": -1}, "target_alphas": {"caption": 1}}, "'tok_rgb' must be"),
        ({"input_alphas": {"tok_rgb": 1}, "target_alphas": {"rgb": 1}}, "'rgb' is 'pixels'"),
        ({"input_alphas": {"tok_rgb": 0}, "target_alphas": {"caption": 1}}, "at least one alpha"),
        ({"weight": 0, "input_alphas": {"rgb": 1}, "target_alphas": {"caption": 1}}, "weight"),
        ({"input_alphas": {"rgb": 1}, "targets": {}}, "unknown key"),
    ],
)
def test_bad_mixtures_are_rejected(component, match):
    with pytest.raises(ValueError, match=match):
        build_mixture([component], REG)


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="unknown mixture 'nope'"):
        build_mixture("nope", REG)


# ---------------------------------------------------------------- span masking


def test_span_mask_matches_the_documented_example():
    seq = np.array([210, 211, 212, 213, 214, 215])
    mask = np.array([0, 0, 1, 1, 0, 1], bool)
    inp, tgt = apply_span_mask(seq, mask, SENTINELS, EOS)
    assert inp.tolist() == [210, 211, 4, 214, 5]
    assert tgt.tolist() == [4, 212, 213, 5, 215, EOS]


def test_span_masking_round_trips_fits_and_crops_to_a_prefix():
    rng = np.random.default_rng(3)
    for trial in range(400):
        seq = rng.integers(200, 1000, int(rng.integers(1, 60)))
        bi, bt = int(rng.integers(0, 70)), int(rng.integers(1, 70))
        kw = dict(input_budget=bi, sentinel_ids=SENTINELS, eos_id=EOS)
        inp, full = span_mask(seq, np.random.default_rng(trial), target_budget=10**6, **kw)
        assert len(inp) <= bi and np.array_equal(unmask(inp, full, SENTINELS), seq)
        sents = full[np.isin(full, SENTINELS)]
        assert sents.tolist() == SENTINELS[: len(sents)] and full[0] == SENTINELS[0]
        if bi == 0:
            assert len(inp) == 0 and full.tolist() == [SENTINELS[0], *seq.tolist(), EOS]
        inp2, tgt = span_mask(seq, np.random.default_rng(trial), target_budget=bt, **kw)
        assert np.array_equal(inp2, inp) and len(tgt) - 1 <= bt
        assert np.array_equal(tgt, full[: len(tgt)])  # a prefix of the full target ...
        assert len(tgt) == min(len(full), bt + 1)  # ... as long as the budget allows
        assert np.array_equal(crop_target(full, bt), tgt)
        if bi == 0:  # a fully masked sequence always trains its first tokens
            assert tgt[0] == SENTINELS[0] and tgt[1:].tolist() == [*seq.tolist(), EOS][:bt]


def test_span_masking_keep_prob_and_no_target_budget():
    rng = np.random.default_rng(4)
    seq = rng.integers(200, 1000, 90)
    kw = dict(sentinel_ids=SENTINELS, eos_id=EOS)
    fracs = []
    for _ in range(200):
        inp, tgt = span_mask(seq, rng, input_budget=90, target_budget=200, keep_prob=0.7, **kw)
        fracs.append((np.isin(inp, SENTINELS, invert=True)).sum() / 90)
    assert abs(np.mean(fracs) - 0.7) < 0.02
    inp, tgt = span_mask(seq, rng, input_budget=90, target_budget=0, **kw)
    assert np.array_equal(inp, seq) and tgt.tolist() == [EOS]  # nothing masked for nothing
    with pytest.raises(ValueError, match="sentinel ids"):
        span_mask(np.array([5, 6]), rng, input_budget=2, target_budget=2, **kw)


# ---------------------------------------------------------------- FourMMasking

E, T = 128, 128
PIXELS = {"pixels_rgb": ((64, 64, 3), np.float32)}


def out_spec(e, t):
    spec = {k: ((e,), np.int32) for k in ("enc_tokens", "enc_modality", "enc_positions")}
    spec |= {k: ((t,), np.int32) for k in ("dec_input_tokens", "dec_target_tokens")}
    spec |= {k: ((t,), np.int32) for k in ("dec_modality", "dec_positions")}
    return spec | {"enc_mask": ((e,), bool), "dec_mask": ((t,), bool), **PIXELS}


def is_subsequence(a, b):
    it = iter(b.tolist())
    return all(x in it for x in a.tolist())


def check_sample(out, ex, e=E, t=T):
    """Every property of one masked sample that the example itself can confirm."""
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == out_spec(e, t)
    for side in ("enc", "dec"):
        pad = ~out[f"{side}_mask"]
        assert all(np.all(v[pad] == 0) for k, v in out.items() if k.startswith(side))
    assert REG.index("rgb") not in out["dec_modality"][out["dec_mask"]]
    rgb = ex["rgb"] / 255.0 if "rgb" in ex else np.zeros((64, 64, 3))
    np.testing.assert_allclose(out["pixels_rgb"], rgb, atol=1e-6)
    tok, pos = parts(out, "rgb", "enc")
    assert np.all(tok == 0) and len(set(pos)) == len(pos) and np.all(pos < 64)
    for name in ("tok_rgb", "tok_depth", "tok_normals", "tok_semseg"):
        flat = ex[name].reshape(-1) if name in ex else None
        etok, epos = parts(out, name, "enc")
        dinp, dtgt, dpos = parts(out, name, "dec")
        both = np.concatenate([epos, dpos])
        assert len(set(both.tolist())) == len(both)  # inputs and targets disjoint, no repeats
        assert np.all(dinp == 0)
        if flat is None:
            assert len(both) == 0
        else:
            assert np.array_equal(etok, flat[epos]) and np.array_equal(dtgt, flat[dpos])
    for name in SEQS:
        etok, epos = parts(out, name, "enc")
        dinp, dtgt, dpos = parts(out, name, "dec")
        seq = ex[name][ex[name] != 0] if name in ex else np.zeros(0)
        assert np.array_equal(epos, np.arange(len(etok))) and np.array_equal(
            dpos, np.arange(len(dtgt))
        )
        assert is_subsequence(etok[~np.isin(etok, SENTINELS)], seq)
        if len(dtgt):
            assert dinp[0] == SENTINELS[0] and np.array_equal(
                dinp[1:], dtgt[:-1]
            )  # teacher forcing
        if len(dtgt) and dtgt[-1] == EOS:  # a full target: the original comes back
            assert np.array_equal(unmask(etok, np.append(dinp[:1], dtgt), SENTINELS), seq)
        if len(etok) and not np.isin(etok, SENTINELS).any():
            assert np.array_equal(etok, seq)  # nothing masked: the whole sequence


def test_masked_samples_match_the_example_and_keep_static_shapes():
    rng = np.random.default_rng(5)
    m = masking()
    full_targets = 0
    for _ in range(300):
        drop = [n for n in REG.names if rng.random() < 0.2]
        ex = make_example(rng, drop)
        try:
            out = m(ex, rng)
        except ValueError as err:  # a component needs at least one input and target modality
            assert "no mixture component" in str(err)
            continue
        check_sample(out, ex)
        assert out["enc_mask"].sum() <= E and out["dec_mask"].sum() <= T
        full_targets += EOS in out["dec_target_tokens"][out["dec_mask"]]
    assert full_targets > 20  # the round-trip branch above was exercised


def test_image_budgets_are_filled_exactly_and_alpha0_modalities_stay_out():
    rng = np.random.default_rng(6)
    cfg = [{"input_alphas": {"tok_rgb": 1, "rgb": 1}, "target_alphas": {"tok_depth": 0.5}}]
    m = masking(cfg, e=40, t=50, max_input_tokens={"rgb": 10})
    for _ in range(100):
        ex = make_example(rng)
        out = m(ex, rng)
        check_sample(out, ex, 40, 50)
        enc_mod = set(out["enc_modality"][out["enc_mask"]].tolist())
        assert enc_mod <= {REG.index("tok_rgb"), REG.index("rgb")}
        assert out["enc_mask"].sum() == 40 and (out["enc_modality"] == REG.index("rgb")).sum() <= 10
        assert set(out["dec_modality"][out["dec_mask"]].tolist()) == {REG.index("tok_depth")}
        assert out["dec_mask"].sum() == 50


def test_missing_modalities_get_nothing_and_unusable_examples_fail_clearly():
    rng = np.random.default_rng(7)
    m = masking("all_to_all")
    for _ in range(50):
        ex = make_example(rng, drop=("caption", "tok_depth", "rgb"))
        out = m(ex, rng)
        check_sample(out, ex)
        used = set(out["enc_modality"][out["enc_mask"]]) | set(out["dec_modality"][out["dec_mask"]])
        assert not used & {REG.index(n) for n in ("caption", "tok_depth", "rgb")}
    with pytest.raises(ValueError, match="no mixture component can use this example"):
        masking("rgb_to_all")(make_example(rng, drop=("rgb",)), rng)


def test_masking_is_deterministic_given_the_rng():
    ex = make_example(np.random.default_rng(8))
    a, b = (masking()(ex, np.random.default_rng(9)) for _ in range(2))
    c = masking()(ex, np.random.default_rng(10))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    d = pickle.loads(pickle.dumps(masking()))(ex, np.random.default_rng(9))  # Grain workers
    assert all(np.array_equal(a[k], d[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_masking_runs_as_a_grain_transform():
    from mmjax.data import build_dataset, make_iterator

    rng = np.random.default_rng(11)
    source = [make_example(rng) for _ in range(12)]
    ds = lambda: build_dataset(
        source, batch_size=4, seed=3, num_epochs=1, transform=masking("all_to_all")
    )
    batches = list(make_iterator(ds()))
    assert len(batches) == 3
    for b in batches:
        assert {k: (v.shape[1:], v.dtype) for k, v in b.items()} == out_spec(E, T)
        assert b["enc_mask"].shape[0] == 4
    again = list(make_iterator(ds()))
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(batches, again, strict=True) for k in x)


@pytest.mark.parametrize(
    "change, kwargs, match",
    [
        ({}, {"e": 0}, "input_budget must be >= 1"),
        ({}, {"t": 0}, "target_budget must be >= 1"),
        ({"tok_rgb": np.zeros((8, 8), np.float32)}, {}, "'tok_rgb'.*integers"),
        ({"tok_rgb": np.zeros((7, 7), np.int32)}, {}, "'tok_rgb'.*shape"),
        ({"tok_rgb": np.full((8, 8), 1000)}, {}, "'tok_rgb'.*token ids"),
        ({"caption": np.ones(97, np.int32)}, {}, "'caption'.*max_length"),
        ({"caption": np.ones((2, 3), np.int32)}, {}, "'caption'.*1-D"),
        ({"caption": np.array([300, 4, 301])}, {}, "'caption'.*sentinel"),
        ({"rgb": np.full((64, 64, 3), np.nan, np.float32)}, {}, "'rgb'.*\\[0, 1\\]"),
        ({"rgb": np.zeros((32, 32, 3), np.uint8)}, {}, "'rgb'.*shape"),
        ({"rgb": np.full((64, 64, 3), 2.0)}, {}, "'rgb'.*\\[0, 1\\]"),
        ({}, {"max_input_tokens": {"foo": 3}}, "max_input_tokens.*'foo'"),
    ],
)
def test_bad_input_names_the_problem(change, kwargs, match):
    rng = np.random.default_rng(12)
    with pytest.raises(ValueError, match=match):
        masking(**kwargs)({**make_example(rng), **change}, rng)


def test_sequences_need_sentinels_and_eos():
    with pytest.raises(ValueError, match="sentinel_ids and eos_id"):
        FourMMasking(REG, 8, 8, "all_to_all")
