"""Next-scale prediction (VAR, `mmjax.fourm.nextscale`) against independent references: the
block-causal mask against a brute-force loop, the teacher-forcing inputs against numpy
(nearest upsampling, area downsampling), causality of the logits over scales, a tiny batch
overfit by teacher forcing, generation that agrees with the teacher-forced forward pass on its
own output (greedy, with and without guidance), and the bundle round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.fourm.nextscale import (
    CODES,
    block_causal_mask,
    build_nextscale,
    generate,
    load_nextscale,
    next_scale_inputs,
    pad_conditions,
    save_nextscale,
)
from mmjax.fourm.nextscale.layout import code_maps, scale_offsets

SCALES, K, D, L = (1, 2, 4), 16, 4, 6
TRUNK = {"size": "tiny", "width": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64}
LAYOUT = dict(scales=SCALES, codebook_size=K, code_dim=D, code_levels=1, upsample="nearest",
              cond_vocab=20, cond_length=L)  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    """A tiny random NextScale with a random code table, and a batch of three conditions:
    full, half and none (dropped)."""
    model = build_nextscale(TRUNK, **LAYOUT)
    rng = np.random.default_rng(0)
    cond = rng.integers(0, 20, (3, L)).astype(np.int32)
    mask = np.arange(L)[None] < np.array([[L], [3], [0]])
    tokens = rng.integers(0, K, (3, 21)).astype(np.int32)
    variables = jax.jit(model.init)(jax.random.key(0), cond, mask, tokens)
    table = jax.random.normal(jax.random.key(1), (1, K, D))
    variables = {**variables, CODES: {"table": table}}
    apply = jax.jit(lambda c, cm, t: model.apply(variables, c, cm, t))
    return dict(model=model, variables=variables, cond=cond, mask=mask, tokens=tokens, apply=apply)


def brute_force_mask(cond_valid, scales):
    """The rule of the layout, one query-key pair at a time."""
    sid = [None] * len(cond_valid) + [i for i, s in enumerate(scales) for _ in range(s * s)]
    t = len(sid)
    out = np.zeros((t, t), bool)
    for q in range(t):
        for k in range(t):
            if q == k:
                out[q, k] = True
            elif sid[k] is None:  # a condition key: visible to all while valid
                out[q, k] = bool(cond_valid[k])
            elif sid[q] is not None:  # scale query, scale key: earlier or same scale
                out[q, k] = sid[k] <= sid[q]
    return out


def test_block_causal_mask_equals_brute_force():
    cond_mask = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1]], bool)
    scales = (1, 2, 3)
    mask = np.asarray(block_causal_mask(jnp.asarray(cond_mask), scales))
    assert mask.shape == (3, 1, 3 + 14, 3 + 14)
    for b in range(3):
        np.testing.assert_array_equal(mask[b, 0], brute_force_mask(cond_mask[b], scales))
    prefix = np.asarray(block_causal_mask(jnp.asarray(cond_mask), scales, num_tokens=5))
    np.testing.assert_array_equal(prefix, mask[:, :, :8, :8])


def test_teacher_forcing_inputs_equal_numpy():
    """Scale s's input: the sum of the nearest-upsampled code maps of scales < s, area
    downsampled to s x s; the first scale's is zero."""
    rng = np.random.default_rng(1)
    table = rng.normal(size=(1, K, D)).astype(np.float32)
    tokens = rng.integers(0, K, (2, 21))
    maps = code_maps(jnp.asarray(table), jnp.asarray(tokens), SCALES)
    got = np.asarray(next_scale_inputs(maps, SCALES, "nearest"))
    side, total, want, start = SCALES[-1], np.zeros((2, 4, 4, D)), [np.zeros((2, 1, D))], 0
    for i, s in enumerate(SCALES[:-1]):
        codes = table[0][tokens[:, start : start + s * s]].reshape(2, s, s, D)
        start += s * s
        f = side // s
        total = total + np.repeat(np.repeat(codes, f, axis=1), f, axis=2)
        n, g = SCALES[i + 1], side // SCALES[i + 1]
        want.append(total.reshape(2, n, g, n, g, D).mean(axis=(2, 4)).reshape(2, n * n, D))
    np.testing.assert_allclose(got, np.concatenate(want, axis=1), atol=1e-6)


def test_logits_of_a_scale_ignore_later_scales(tiny):
    m, v, cond, mask, tokens = (tiny[k] for k in ("model", "variables", "cond", "mask", "tokens"))
    apply = tiny["apply"]
    base = np.asarray(apply(cond, mask, tokens))
    offsets = scale_offsets(SCALES)
    for j in range(len(SCALES)):  # new tokens from scale j on: scales <= j keep their logits
        changed = tokens.copy()
        changed[:, offsets[j] :] = (changed[:, offsets[j] :] + 5) % K
        out = np.asarray(apply(cond, mask, changed))
        np.testing.assert_allclose(out[:, : offsets[j + 1]], base[:, : offsets[j + 1]], atol=1e-5)
        if j + 1 < len(SCALES):  # and the later scales do see them
            assert np.abs(out[:, offsets[j + 1] :] - base[:, offsets[j + 1] :]).max() > 1e-4
    # the raw inputs of later scales never reach earlier logits either
    inputs = np.asarray(m.apply(v, tokens, method="inputs"))
    noisy = inputs.copy()
    noisy[:, offsets[1] :] += 3.0
    logits = lambda x: np.asarray(m.apply(v, cond, mask, x, method="logits"))
    np.testing.assert_allclose(logits(noisy)[:, :1], logits(inputs)[:, :1], atol=1e-5)
    # a valid condition token matters; a masked one does not
    other = cond.copy()
    other[:, 4] = (other[:, 4] + 1) % 20
    out = np.asarray(apply(other, mask, tokens))
    assert np.abs(out[0] - base[0]).max() > 1e-4
    np.testing.assert_allclose(out[1:], base[1:], atol=1e-5)


def test_teacher_forcing_overfits_a_tiny_batch(tiny):
    m, v, cond, mask, tokens = (tiny[k] for k in ("model", "variables", "cond", "mask", "tokens"))

    def loss_fn(params):
        logits = m.apply({**v, "params": params}, cond, mask, tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    params = v["params"]
    opt = tx.init(params)
    losses = []
    for _ in range(60):
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    assert losses[0] > 0.8 * np.log(K) and losses[-1] < 0.25 * losses[0], losses[::10]


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_greedy_generation_is_the_argmax_of_teacher_forcing(tiny, guidance):
    """Generating scale by scale and scoring the finished pyramid in one teacher-forced pass
    must agree: each generated token is the argmax of its (guided) logits."""
    m, v, cond, mask = (tiny[k] for k in ("model", "variables", "cond", "mask"))
    out = np.asarray(generate(m, v, cond, mask, jax.random.key(3), temperature=0.0,
                              guidance=guidance))  # fmt: skip
    assert out.shape == (3, 21) and out.dtype == np.int32
    cond_logits = np.asarray(tiny["apply"](cond, mask, out))
    free_logits = np.asarray(tiny["apply"](cond, np.zeros_like(mask), out))
    guided = free_logits + guidance * (cond_logits - free_logits)
    np.testing.assert_array_equal(out, guided.argmax(-1))
    top1 = generate(m, v, cond, mask, jax.random.key(4), temperature=1.0, top_k=1,
                    guidance=guidance)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(top1), out)


def test_sampling_draws_valid_varied_tokens(tiny):
    m, v, cond, mask = (tiny[k] for k in ("model", "variables", "cond", "mask"))
    a = np.asarray(generate(m, v, cond, mask, jax.random.key(5), temperature=1.5, top_k=8))
    b = np.asarray(generate(m, v, cond, mask, jax.random.key(6), temperature=1.5, top_k=8))
    assert a.min() >= 0 and a.max() < K and (a != b).any()
    with pytest.raises(ValueError, match="top_p"):
        generate(m, v, cond, mask, jax.random.key(5), top_p=0.0)
    with pytest.raises(ValueError, match="cond and cond_mask"):
        generate(m, v, cond[:, :2], mask, jax.random.key(5))


def test_bundle_round_trip(tiny, tmp_path):
    m, v, cond, mask, tokens = (tiny[k] for k in ("model", "variables", "cond", "mask", "tokens"))
    path = save_nextscale(tmp_path / "ns", model_config=TRUNK, layout=LAYOUT, variables=v,
                          tokenizer="tok", condition="caption")  # fmt: skip
    model, variables, meta = load_nextscale(path)
    assert model.scales == SCALES and meta["tokenizer"] == "tok"
    np.testing.assert_allclose(
        np.asarray(model.apply(variables, cond, mask, tokens)),
        np.asarray(m.apply(v, cond, mask, tokens)),
        atol=1e-6,
    )


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="more than the model's condition length 3"):
        pad_conditions([[1, 2], [1, 2, 3, 4]], 3)
    ids, ok = pad_conditions([[4, 5], []], 3, pad_id=9)
    np.testing.assert_array_equal(ids, [[4, 5, 9], [9, 9, 9]])
    np.testing.assert_array_equal(ok, [[1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="unknown key"):
        build_nextscale({"size": "tiny", "layers": 3}, **LAYOUT)
    with pytest.raises(ValueError, match="size must be one of"):
        build_nextscale({"size": "huge"}, **LAYOUT)
    model = build_nextscale(TRUNK, **{**LAYOUT, "scales": (2, 1)})
    with pytest.raises(ValueError, match="strictly increasing"):
        model.init(jax.random.key(0), np.zeros((1, L), np.int32), np.ones((1, L), bool),
                   np.zeros((1, 5), np.int32))  # fmt: skip
