"""image_token_log_probs against the model's training path (a hand-built masked batch), a
normalization property, and its errors."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax.fourm import build_fourm, build_registry, example_batch
from mmjax.fourm.scoring import image_token_log_probs

REG = build_registry({
    "rgb": dict(kind="pixels", grid=(4, 4), patch_size=2),
    "tok_a": dict(kind="image_tokens", vocab_size=24, grid=(4, 4)),
    "tok_b": dict(kind="image_tokens", vocab_size=32, grid=(4, 4)),
    "cap": dict(kind="sequence", vocab_size=40, max_length=10),
})  # fmt: skip
B = 3


@pytest.fixture(scope="module")
def setup():
    model = build_fourm(
        {"size": "tiny", "width": 64, "num_heads": 2, "encoder_depth": 1, "decoder_depth": 1},
        REG,
    )
    variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), example_batch(REG, 1, 4, 4)))
    emb = variables["params"]["embeddings"]  # larger embeddings: outputs follow the inputs
    for name in list(emb):
        if name.startswith("tok_emb_"):
            emb[name] = emb[name] * 25.0
    rng = np.random.default_rng(0)
    caps = np.zeros((B, 10), np.int32)
    for i, n in enumerate((3, 10, 6)):
        caps[i, :n] = rng.integers(1, 40, n)
    cond = {"cap": caps, "tok_b": rng.integers(0, 32, (B, 16))}
    return model, variables, cond, rng.integers(0, 24, (B, 16))


def test_log_probs_match_the_training_forward(setup):
    """The same numbers from the model's __call__ on a masked batch built by hand, with the
    encoder slots in another order (tok_b first, then the caption's real tokens only)."""
    model, variables, cond, target = setup
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
    model, variables, cond, _ = setup
    one = {k: np.repeat(v[:1], 24, axis=0) for k, v in cond.items()}
    every = np.repeat(np.arange(24)[:, None], 16, axis=1)  # row v: token v everywhere
    logp = image_token_log_probs(model, variables, REG, one, "tok_a", every)
    np.testing.assert_allclose(np.exp(logp).sum(0), 1.0, atol=1e-5)
    other = {k: np.repeat(v[1:2], 24, axis=0) for k, v in cond.items()}
    moved = image_token_log_probs(model, variables, REG, other, "tok_a", every)
    assert np.abs(logp - moved).max() > 1e-3


@pytest.mark.parametrize(
    "target, cond_extra, tokens, match",
    [
        ("cap", {}, np.zeros((B, 16), np.int32), "target 'cap' is not one of"),
        ("nope", {}, np.zeros((B, 16), np.int32), "target 'nope' is not one of"),
        ("tok_b", {}, np.zeros((B, 16), np.int32), "cannot also be conditioning"),
        ("tok_a", {}, np.full((B, 16), 24), r"lie in \[0, 24\)"),
        ("tok_a", {}, np.zeros((B, 15), np.int32), "'tok_a': image tokens"),
        ("tok_a", {}, np.zeros((B + 1, 16), np.int32), "batch"),
    ],
)
def test_bad_input_raises(setup, target, cond_extra, tokens, match):
    model, variables, cond, _ = setup
    with pytest.raises(ValueError, match=match):
        image_token_log_probs(model, variables, REG, cond | cond_extra, target, tokens)
