"""Visual-token statistics (`mmjax.eval.token_stats`, `python -m mmjax.eval.tokens`) against
independent numpy/scipy computations on known distributions: Zipf samples give back their
exponent, uniform and constant tokens their entropies, copied and independent neighbours
their mutual information; and the CLI end to end on a small pre-tokenized dataset and on
Tokenizer bundles + the scenes source."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import optimize
from scipy.stats import entropy as scipy_entropy

from mmjax.eval.token_plot import EMPIRICAL, FIT, render_rank_frequency
from mmjax.eval.token_stats import (
    entropy_bits,
    neighbour_mutual_information,
    pair_mutual_information,
    position_entropy_bits,
    token_statistics,
    zipf_exponent,
    zipf_pmf,
)
from mmjax.eval.tokens import compute, main, write_outputs

R, NUM = 32, 16
MODEL = {"type": "conv", "size": "tiny", "channels": 8, "channel_mult": [1, 1, 2, 2]}
QUANT = {"type": "fsq", "levels": [5, 5, 4, 4]}


def _zipf_sample(s, k, n, seed):
    """n tokens whose rank-frequency law is Zipf(s) over k codes, the ranks given to codes
    in a random order (so the estimator has to find the ranking)."""
    rng = np.random.default_rng(seed)
    p = np.arange(1, k + 1, dtype=np.float64) ** -s
    return rng.permutation(k)[rng.choice(k, size=n, p=p / p.sum())]


@pytest.mark.parametrize("s", [0.7, 1.1, 1.6])
def test_zipf_exponent_of_a_zipf_sample(s):
    # 10^6 tokens over 1024 codes: the MLE lands within 0.005 of s (measured: < 0.001).
    counts = np.bincount(_zipf_sample(s, 1024, 1_000_000, seed=int(s * 10)), minlength=1024)
    assert abs(zipf_exponent(counts) - s) < 0.005


def test_zipf_exponent_is_the_likelihood_maximum():
    """Same value as scipy maximizing the truncated-Zipf log-likelihood of the tokens'
    ranks directly, on a histogram that is not Zipf-shaped."""
    counts = np.array([0, 50, 3, 17, 0, 9, 120, 1, 1, 30, 4])
    freq = np.sort(counts[counts > 0])[::-1]
    ranks = np.arange(1, freq.size + 1)

    def nll(s):
        return s * np.sum(freq * np.log(ranks)) + freq.sum() * np.log(np.sum(ranks**-s))

    ref = optimize.minimize_scalar(nll, bounds=(0, 20), method="bounded", options={"xatol": 1e-9})
    assert zipf_exponent(counts) == pytest.approx(ref.x, abs=1e-6)
    np.testing.assert_allclose(zipf_pmf(1.3, 5), ranks[:5] ** -1.3 / np.sum(ranks[:5] ** -1.3))


def test_uniform_tokens():
    k = 256
    tokens = np.random.default_rng(0).integers(0, k, size=(2000, 16, 16))
    st = token_statistics(tokens, k)
    counts = np.bincount(tokens.reshape(-1), minlength=k)
    np.testing.assert_array_equal(st["unigram_counts"], counts)
    assert st["entropy_bits"] == pytest.approx(scipy_entropy(counts, base=2), abs=1e-12)
    # The plug-in entropy sits ~(K - 1) / (2 n ln 2) = 4e-4 bits under log2 K.
    assert 8.0 - 2e-3 < st["entropy_bits"] < 8.0
    assert st["perplexity"] == pytest.approx(256, rel=2e-3)
    assert st["codebook_usage"] == 1.0 and st["distinct_codes"] == k
    assert st["max_entropy_bits"] == 8.0
    # Sorting noisy counts (2000 +- 45 each) tilts the flat curve a little: s ~ 0.02.
    assert st["zipf_exponent"] < 0.05
    per_pos = np.asarray(st["position_entropy_bits"])
    # 2000 tokens per position: bias (K - 1) / (2 * 2000 ln 2) = 0.09 bits, spread < 0.05.
    assert per_pos.shape == (16, 16) and np.all(np.abs(per_pos - (8 - 0.092)) < 0.06)
    np.testing.assert_allclose(st["position_perplexity"], 2.0**per_pos, rtol=1e-5)


def test_constant_tokens():
    st = token_statistics(np.full((10, 4, 4), 3, np.int32), 16)
    assert st["entropy_bits"] == 0.0 and st["perplexity"] == 1.0
    assert st["distinct_codes"] == 1 and st["codebook_usage"] == 1 / 16
    assert st["mean_position_entropy_bits"] == 0.0 and st["zipf_exponent"] is None
    assert st["mutual_information_horizontal_bits"] == 0.0
    assert st["mutual_information_vertical_bits"] == 0.0


def test_position_entropy_with_one_fixed_position():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 8, size=(3000, 4, 4))
    tokens[:, 1, 2] = 7
    h = position_entropy_bits(tokens)
    ref = np.array(
        [[scipy_entropy(np.bincount(tokens[:, i, j]), base=2) for j in range(4)] for i in range(4)]
    )
    np.testing.assert_allclose(h, ref, atol=1e-12)
    assert h[1, 2] == 0.0
    others = np.delete(h.reshape(-1), 1 * 4 + 2)
    assert np.all(np.abs(others - 3.0) < 0.01)
    # Position carries information: the pooled entropy exceeds the mean positional one.
    st = token_statistics(tokens, 8)
    assert st["mean_position_entropy_bits"] == pytest.approx(h.mean())
    assert st["entropy_bits"] > st["mean_position_entropy_bits"] + 0.05


def _mi_table(a, b):
    """Mutual information (bits) from the 2D contingency table: sum p log p / (p_a p_b)."""
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    p = table / table.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log2(p[nz] / (pa @ pb)[nz])))


def test_mutual_information_matches_the_contingency_table():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 12, size=50_000)
    b = np.where(rng.random(a.size) < 0.6, (a * 5 + 1) % 12, rng.integers(0, 12, a.size))
    assert pair_mutual_information(a, b) == pytest.approx(_mi_table(a, b), abs=1e-9)
    assert pair_mutual_information(a, b) > 0.5


def test_independent_neighbours_have_mi_near_zero():
    k, tokens = 16, np.random.default_rng(3).integers(0, 16, size=(4000, 8, 8))
    pairs = 4000 * 8 * 7
    bias = (k - 1) ** 2 / (2 * pairs * np.log(2))  # expected plug-in MI of independent pairs
    for axis in (0, 1):
        mi = neighbour_mutual_information(tokens, axis)
        assert mi["pairs"] == pairs
        assert 0.0 <= mi["bits"] < 3 * bias and abs(mi["bits"] - bias) < 2 * bias
        assert abs(mi["null_bits"] - bias) < 2 * bias


def test_copied_left_neighbour_gives_mi_equal_to_entropy():
    rows = np.random.default_rng(4).integers(0, 32, size=(500, 6, 1))
    tokens = np.repeat(rows, 6, axis=2)  # every token equals its left neighbour
    st = token_statistics(tokens, 32)
    assert st["mutual_information_horizontal_bits"] == pytest.approx(entropy_bits(tokens), abs=1e-9)
    assert st["mutual_information_horizontal_bits"] > 4.9
    # Rows are independent of each other: vertical MI is the estimator's bias (~ its null).
    assert st["mutual_information_vertical_bits"] < 0.5
    assert st["mutual_information_vertical_bits"] == pytest.approx(
        st["mutual_information_vertical_null_bits"], abs=0.1
    )


def test_bad_tokens_are_refused():
    with pytest.raises(TypeError, match="integers"):
        token_statistics(np.zeros((2, 2, 2), np.float32), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        token_statistics(np.full((2, 2, 2), 4), 4)
    with pytest.raises(ValueError, match=r"\[N, h, w\]"):
        token_statistics(np.zeros((2, 2, 2, 2), np.int32), 4)


def test_plot_draws_both_curves():
    counts = np.bincount(_zipf_sample(1.1, 200, 20_000, seed=5), minlength=256)
    img = np.asarray(render_rank_frequency(counts, zipf_exponent(counts), "t"))
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert EMPIRICAL in colours and FIT in colours
    # The fit is drawn over the plot area's width, the empirical curve too (200 ranks).
    for colour in (EMPIRICAL, FIT):
        cols = np.nonzero(np.all(img == colour, axis=-1).any(axis=0))[0]
        assert cols.max() - cols.min() > 0.5 * img.shape[1]


def test_large_codebook_histogram_goes_to_npy(tmp_path):
    k = 2**17  # LFQ-sized: the histogram is stored beside the JSON
    tokens = np.random.default_rng(6).integers(0, k, size=(50, 8, 8))
    record = write_outputs(compute({"tok_rgb": (tokens, k)}), str(tmp_path), {})
    entry = record["modalities"]["tok_rgb"]
    assert "unigram_counts" not in entry
    saved = np.load(tmp_path / entry["unigram_counts_file"])
    np.testing.assert_array_equal(saved, np.bincount(tokens.reshape(-1), minlength=k))
    assert entry["codebook_usage"] == pytest.approx(len(np.unique(tokens)) / k)


@pytest.fixture(scope="module")
def data(tmp_path_factory, untrained_tokenizers):
    """16 train scenes at 32 px pre-tokenized by untrained rgb and depth bundles (4 x 4
    tokens of a 400-code FSQ)."""
    from mmjax.data import ScenesSource
    from mmjax.data.pretokenized import PretokenizedSource
    from mmjax.pretokenize import pretokenize

    root = tmp_path_factory.mktemp("token_stats")
    dirs = untrained_tokenizers(("rgb", "depth"), MODEL, QUANT, R)
    out = str(root / "pretokenized")
    pretokenize(ScenesSource("train", R, NUM), dirs, out, resolution=R, batch_size=8,
                text_examples=64, info={"source": "scenes", "split": "train"})  # fmt: skip
    source = PretokenizedSource(out, ["tok_rgb", "tok_depth"])
    stored = {m: np.stack([source[i][m] for i in range(NUM)]) for m in source.modalities}
    return dict(root=root, dirs=dirs, out=out, stored=stored)


def test_cli_on_a_pretokenized_dataset(data, capsys):
    out = str(data["root"] / "stats")
    record = main([data["out"], "--out", out])
    printed = capsys.readouterr().out
    assert "tok_rgb" in printed and "tok_depth" in printed and "Zipf s" in printed
    with open(os.path.join(out, "token_stats.json")) as f:
        saved = json.load(f)
    assert saved["input"]["split"] == "train" and set(saved["modalities"]) == {
        "tok_rgb",
        "tok_depth",
    }
    for name, tokens in data["stored"].items():
        s = saved["modalities"][name]
        counts = np.bincount(tokens.reshape(-1), minlength=400)
        assert s["codebook_size"] == 400 and s["grid"] == [4, 4] and s["num_images"] == NUM
        np.testing.assert_array_equal(s["unigram_counts"], counts)
        assert s["entropy_bits"] == pytest.approx(scipy_entropy(counts, base=2), abs=1e-9)
        assert s["distinct_codes"] == len(np.unique(tokens)) > 3
        assert s["zipf_exponent"] == pytest.approx(zipf_exponent(counts), abs=1e-9)
        pairs = tokens[:, :, :-1].reshape(-1), tokens[:, :, 1:].reshape(-1)
        assert s["mutual_information_horizontal_bits"] == pytest.approx(_mi_table(*pairs))
        png = Image.open(os.path.join(out, s["rank_frequency_png"]))
        assert png.size == (760, 540)
    assert (
        record["modalities"]["tok_rgb"]["entropy_bits"]
        == saved["modalities"]["tok_rgb"]["entropy_bits"]
    )
    # --modalities and --num select.
    sub = main([data["out"], "--modalities", "tok_depth", "--num", "5", "--out", out + "_d"])
    assert list(sub["modalities"]) == ["tok_depth"]
    assert sub["modalities"]["tok_depth"]["num_images"] == 5


def test_cli_tokenizer_and_source_mode_matches_the_pretokenized_tokens(data, tmp_path):
    out = str(tmp_path / "stats")
    record = main(
        ["--tokenizer", data["dirs"]["rgb"], "--source", "scenes", "--split", "train",
         "--num", str(NUM), "--batch-size", "6", "--out", out]
    )  # fmt: skip
    s = record["modalities"]["tok_rgb"]
    expected = np.bincount(data["stored"]["tok_rgb"].reshape(-1), minlength=400)
    np.testing.assert_array_equal(s["unigram_counts"], expected)
    assert record["input"]["data"] == {"source": "scenes", "split": "train"}
    assert os.path.exists(os.path.join(out, "rank_frequency_tok_rgb.png"))


def test_cli_errors_name_the_problem(data, capsys):
    cases = [
        ([str(data["root"] / "missing")], "is not a directory"),
        ([data["out"], "--modalities", "tok_normals"], "'tok_normals' is not in the manifest"),
        ([data["out"], "--modalities", "caption"], "'sequence' data, not image tokens"),
        ([data["out"], "--num", "0"], "--num must be >= 1"),
        ([], "either a pre-tokenized DIR or --tokenizer"),
        (["--tokenizer", data["dirs"]["rgb"], "--source", "nowhere"], "data.source must be"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err, argv


def test_module_runs_as_a_script(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mmjax.eval.tokens", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "is not a directory" in result.stderr
