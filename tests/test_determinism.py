"""Same command, same numbers: two runs of a short plan from empty workdirs give the same
metrics rows (wall-time fields aside) and the same exported weights, for the tokenizer
trainer, the 4M trainer and the demo; the text tokenizer (trained by every pre-tokenization
of the scenes) learns one vocabulary in every process, whatever PYTHONHASHSEED says."""

import itertools
import json
import os
import subprocess
import sys
from collections import Counter

import jax
import numpy as np
import pytest

from mmjax.text import train_tokenizer
from mmjax.text.wordpiece_training import learn_vocab
from tests.test_fourm_trainer import data, quick  # noqa: F401  (the module-scoped fixture)
from tests.test_tokenizer_trainer import quick as tokenizer_quick

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a row may differ in between two identical runs: when it was written and how fast.
WALL_TIME = {"time", "images_per_s", "tokens_per_s", "examples_per_s", "seconds"}


def _rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in WALL_TIME} for r in rows]


def _assert_same_variables(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


# -- the text tokenizer ------------------------------------------------------------------
def _reference_vocab(word_counts, specials, vocab_size, prefix="##"):
    """Greedy WordPiece merges by brute force: recount every adjacent pair after each merge,
    take the largest count, ties to the smallest (left id, right id)."""
    vocab = list(specials)
    first = sorted({c for w in word_counts for c in w})
    inner = sorted({prefix + c for w in word_counts for c in w[1:]})
    vocab += [t for t in first + inner if t not in specials]
    words = {w: [vocab.index(w[0])] + [vocab.index(prefix + c) for c in w[1:]] for w in word_counts}
    while len(vocab) < vocab_size:
        pairs = Counter()
        for w, s in words.items():
            for p in itertools.pairwise(s):
                pairs[p] += word_counts[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        token = vocab[best[0]] + vocab[best[1]].removeprefix(prefix)
        if token not in vocab:
            vocab.append(token)
        new = vocab.index(token)
        for w, s in words.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            words[w] = out
    return vocab


def test_wordpiece_vocab_equals_brute_force_greedy_merges():
    rng = np.random.default_rng(0)
    for trial in range(30):
        letters = "abcd"[: 2 + trial % 3]
        words = {
            "".join(rng.choice(list(letters), int(rng.integers(1, 7)))): int(rng.integers(1, 4))
            for _ in range(int(rng.integers(1, 12)))
        }
        size = int(rng.integers(3, 40))
        got = learn_vocab(words, ["[PAD]", "[UNK]"], size)
        assert got == _reference_vocab(words, ["[PAD]", "[UNK]"], size), words
        assert len(got) == len(set(got))


TEXT = """
import json, sys
from mmjax.data.text_vocab import scenes_text_tokenizer
print(json.dumps(json.loads(scenes_text_tokenizer(120, 560).to_json_str())["model"]["vocab"]))
"""


def test_scenes_text_tokenizer_is_the_same_in_every_process_and_hash_seed():
    """Many equally frequent pairs in the scenes' captions: the `tokenizers` trainer broke
    their ties in hash-map order, so each process learned another vocabulary."""
    vocabs = []
    for seed in ("0", "1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
        out = subprocess.run(
            [sys.executable, "-c", TEXT], capture_output=True, text=True, env=env, timeout=300
        )
        assert out.returncode == 0, out.stderr[-3000:]
        vocabs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert vocabs[0] == vocabs[1] == vocabs[2]
    assert len(vocabs[0]) == 560


def test_trained_text_tokenizer_encodes_like_a_wordpiece_model():
    corpus = ["a red cube left of a blue sphere", "the red sphere sits behind the cube"] * 3
    tok = train_tokenizer(corpus, vocab_size=520)
    assert tok.vocab_size == 520 and tok.decode(tok.encode(corpus[0])) == corpus[0]
    again = train_tokenizer(corpus, vocab_size=520)
    assert again.to_json_str() == tok.to_json_str()


# -- trainers ----------------------------------------------------------------------------
@pytest.mark.slow  # about 35 s a run on 2 CPU cores, nearly all of it compiling
def test_tokenizer_trainer_twice_from_empty_workdirs_gives_the_same_run(tmp_path):
    from mmjax.tokenizers import Tokenizer
    from mmjax.train.tokenizer_trainer import train_tokenizer as train

    small = {"data.resolution": 32, "eval.usage_images": 8}
    config = tokenizer_quick("rgb", quantizer="vq", steps=3, **small)
    config.log_every = 1
    finals = [train(config, str(tmp_path / run)) for run in ("a", "b")]
    assert finals[0] == finals[1]
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert a == b and len([r for r in a if "loss" in r]) == 3
    _assert_same_variables(
        Tokenizer.load(str(tmp_path / "a")).variables, Tokenizer.load(str(tmp_path / "b")).variables
    )


@pytest.mark.slow  # two 4M runs
def test_fourm_trainer_twice_from_empty_workdirs_gives_the_same_run(data, tmp_path):  # noqa: F811
    from mmjax.fourm.bundle import load_fourm
    from mmjax.train.fourm_trainer import train_fourm

    config = quick(data, steps=3, **{"eval.num_examples": 16})
    config.log_every = 1
    finals = [train_fourm(config, str(tmp_path / run)) for run in ("a", "b")]
    assert finals[0] == finals[1]
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert a == b and len([r for r in a if "loss" in r]) == 3
    _assert_same_variables(load_fourm(str(tmp_path / "a"))[1], load_fourm(str(tmp_path / "b"))[1])


DEMO = """
import json, sys
from tests.conftest import tiny_plan  # also forces the 8 CPU devices of the test process
from mmjax.demo.run import run_demo
from mmjax.demo.stages import PLANS
PLANS["tiny"] = tiny_plan()
results = run_demo(sys.argv[1], "tiny", log=lambda *a: None)
results.pop("seconds")
print(json.dumps(results, sort_keys=True))
"""


@pytest.mark.slow  # the quick plan too (checked by hand): 7 more minutes
def test_the_demo_in_a_fresh_process_gives_the_metrics_of_this_one(tiny_demo, tmp_path):
    """Every stage of the demo (tokenizers, text tokenizer, pre-tokenization, 4M, generation)
    as conftest's tiny_demo ran it in this process, and again in a fresh process with another
    hash seed: the same metrics.json, number for number."""
    here = {k: v for k, v in tiny_demo[1].items() if k != "seconds"}
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", DEMO, str(tmp_path / "run")], capture_output=True, text=True,
        env=env, timeout=3600, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    there = json.loads(out.stdout.strip().splitlines()[-1])
    assert there == json.loads(json.dumps(here, sort_keys=True))
