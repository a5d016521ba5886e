"""The jitted kernels of 4M generation: one parallel (MaskGIT / ROAR) step of an image-token
target, and a whole autoregressive pass over a sequence (or 1D image-token) target, with or
without a KV cache.

Both run the K guidance variants of the conditioning as one batch of K * B rows (the encoder
masks `masks` [K, B, Ec] differ; positions are shared, and tokens too unless a dropped text
condition is read as one sentinel: `variant_tokens`) and combine their logits
with `weights` [K] before sampling (see `generation.guidance`). All shapes are static: the
masked positions of a target are a mask, the commit count of a step is a traced value, and
the AR loop is a `lax.while_loop` that writes into a fixed [B, max_length] buffer.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.fourm.generation.conditioning import PAD_ID
from mmjax.fourm.generation.sampling import combine_logits, sample, sample_with_probs
from mmjax.fourm.modalities import MASK_INPUT

ENC_FIELDS = ("enc_tokens", "enc_modality", "enc_positions")


def _tile(x: jax.Array, k: int) -> jax.Array:
    """[B, ...] -> [K * B, ...], variant-major (row v * B + b is variant v of example b)."""
    return jnp.broadcast_to(x[None], (k, *x.shape)).reshape(k * x.shape[0], *x.shape[1:])


def _encoder_batch(cond: dict, masks: jax.Array, extra: dict | None = None) -> dict:
    """The encoder half of a K * B batch: the conditioning blocks, then (optionally) the
    target's own block `extra` (enc_* fields [B, N] and its mask [B, N]). Where `cond` holds
    `variant_tokens` [K, B, Ec] (a dropped text condition read as one sentinel), those are
    the conditioning tokens of each variant instead of enc_tokens."""
    k = masks.shape[0]
    batch = {}
    for f in ENC_FIELDS:
        if f == "enc_tokens" and "variant_tokens" in cond:
            x = cond["variant_tokens"]  # [K, B, Ec]
            if extra is not None:
                own = jnp.broadcast_to(extra[f][None], (k, *extra[f].shape))
                x = jnp.concatenate([x, own], axis=-1)
            batch[f] = x.reshape(-1, x.shape[-1])
            continue
        x = cond[f] if extra is None else jnp.concatenate([cond[f], extra[f]], axis=1)
        batch[f] = _tile(x, k)
    mask = masks
    if extra is not None:
        own = jnp.broadcast_to(extra["enc_mask"][None], (k, *extra["enc_mask"].shape))
        mask = jnp.concatenate([masks, own], axis=-1)
    batch["enc_mask"] = mask.reshape(-1, mask.shape[-1])
    for name, value in cond.items():
        if name.startswith("pixels_"):
            batch[name] = _tile(value, k)
    return batch


CONFIDENCES = ("logprob", "tempered_prob")


def _commit_mask(score, known, n_commit, depth: int = 0):
    """bool [B, N]: the n_commit[b] highest-scoring unknown positions of each row (ties go
    to the lower position). depth > 1: position p is level p % depth of a residual token,
    and unknown coarser levels go first (by score within a level)."""
    score = jnp.where(known, -jnp.inf, score)
    order = jnp.argsort(-score, axis=-1, stable=True)  # best first
    if depth > 1:  # then a stable sort by level, known positions last
        level = jnp.where(known, depth, jnp.arange(score.shape[-1]) % depth)
        by_level = jnp.argsort(jnp.take_along_axis(level, order, -1), axis=-1, stable=True)
        order = jnp.take_along_axis(order, by_level, -1)
    rank = jnp.argsort(order, axis=-1)  # 0 = first pick
    return (rank < n_commit[:, None]) & ~known


@partial(
    jax.jit,
    static_argnames=(
        "model", "modality_id", "vocab", "random_order", "filter_first", "confidence",
        "decode_chosen", "with_draws", "coarse_first_depth",
    ),
)  # fmt: skip
def parallel_step(
    variables, cond, masks, weights, tokens, known, n_commit, temperature, top_k, top_p, key,
    *, model, modality_id: int, vocab: int, random_order: bool, filter_first: bool = False,
    confidence: str = "logprob", decode_chosen: bool = False, with_draws: bool = False,
    coarse_first_depth: int = 0,
):  # fmt: skip
    """One MaskGIT (random_order=False) or ROAR (True) step of an image-token target.

    tokens [B, N] int32 (valid where `known`), known [B, N] bool: the committed tokens, which
    join the encoder input; the decoder predicts every still-masked position. Each masked
    position draws a token; `n_commit` [B] of them are committed: the most confident ones
    for MaskGIT, a uniformly random subset for ROAR. temperature: a scalar or [B].
    Options (defaults: mmjax; the alternatives: ml-4m's): filter_first filters top-k / top-p
    before dividing by the temperature; confidence 'logprob' ranks by the log-probability of
    the drawn token under the guided logits, 'tempered_prob' by its probability under the
    tempered, filtered distribution; decode_chosen (ROAR) picks the random subset first and
    decodes only those positions; coarse_first_depth (> 1: the target's residual depth)
    commits coarser levels first. Returns (tokens, known) after the step, and with
    `with_draws` also the drawn tokens [B, N] and their tempered probabilities [B, N]
    (valid at the decoded positions)."""
    if confidence not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
    k, b = masks.shape[:2]
    n = tokens.shape[1]
    temperature = jnp.asarray(temperature, jnp.float32)
    if temperature.ndim == 1:  # one per row
        temperature = temperature[:, None]
    k_sample, k_order = jax.random.split(key)
    chosen = None
    if random_order and decode_chosen:
        score = jax.random.uniform(k_order, (b, n))
        chosen = _commit_mask(score, known, n_commit, coarse_first_depth)
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    mod = jnp.full((b, n), modality_id, jnp.int32)
    own = {"enc_tokens": tokens, "enc_modality": mod, "enc_positions": pos, "enc_mask": known}
    context, cmask = model.apply(variables, _encoder_batch(cond, masks, own), method=model.encode)
    # every decoder input masked (2D image tokens read the mask token whatever the input)
    dec = (jnp.full_like(tokens, MASK_INPUT), mod, pos, ~known if chosen is None else chosen)
    logits = model.apply(
        variables, context, cmask, *(_tile(a, k) for a in dec), method=model.decode
    )
    logits = combine_logits(logits[..., :vocab].reshape(k, b, n, vocab), weights)  # [B, N, V]
    drawn, probs = sample_with_probs(k_sample, logits, temperature, top_k, top_p, filter_first)
    if chosen is not None:
        commit = chosen
    else:
        if random_order:
            score = jax.random.uniform(k_order, (b, n))
        elif confidence == "tempered_prob":
            score = probs
        else:
            logp = jax.nn.log_softmax(logits, axis=-1)
            score = jnp.take_along_axis(logp, drawn[..., None], axis=-1)[..., 0]
        commit = _commit_mask(score, known, n_commit, coarse_first_depth)
    out = jnp.where(commit, drawn, tokens), known | commit
    return (*out, drawn, probs) if with_draws else out


def cached_decode(variables, context, cmask, cache, tokens, index, *, model, modality_id: int):
    """One AR decode step of a sequence target against the KV cache: tokens [R] (the previous
    token of each of the R = K * B rows) at position `index` -> (logits [R, V_max], cache)."""
    args = (context, cmask, cache, tokens, index, modality_id, index)
    return model.apply(variables, *args, method=model.decode_step)


# The step alone, its cache updated in place (AOT compiles, tests); `autoregressive` runs it in
# its loop.
decode_step = jax.jit(
    cached_decode, static_argnames=("model", "modality_id"), donate_argnames=("cache",)
)


@partial(
    jax.jit,
    static_argnames=("model", "modality_id", "vocab", "use_cache", "suppress", "filter_first"),
)
def autoregressive(
    variables, cond, masks, weights, temperatures, top_k, top_p, key, start_id, eos_id,
    forced, forced_mask,
    *, model, modality_id: int, vocab: int, use_cache: bool, suppress: tuple = (),
    filter_first: bool = False,
):  # fmt: skip
    """Generates a sequence target token by token: the encoder runs once; the decoder starts
    from `start_id` (the first sentinel: the whole sequence is one masked span; for 1D image
    tokens MASK_INPUT, with eos_id -1) and feeds back each drawn token. With `use_cache`, each
    step is `FourM.decode_step` against a KV cache; without, the whole decoder reruns over
    the static [max_length] buffer (causal mask) and the logits at the current position are
    kept: same result, quadratic cost.

    Stops per row at `eos_id` (-1: never); the eos and everything after it are PAD_ID. The
    loop ends early once every row has stopped. `suppress` token ids are never drawn (pad
    and the start sentinel: neither can occur inside a span). filter_first: top-k / top-p
    before the temperature (ml-4m's order). forced int32 [B, L] with forced_mask bool [B, L]:
    where the mask is True the token is not drawn but taken from `forced` (and fed back), so a
    1D image-token sequence continues from known tokens. Returns (tokens [B, L] int32, number
    of decoding steps run)."""
    k, b = masks.shape[:2]
    length = temperatures.shape[0]
    context, cmask = model.apply(variables, _encoder_batch(cond, masks), method=model.encode)
    if use_cache:
        state0 = model.apply(variables, k * b, length, context, method=model.init_cache)
    else:  # the decoder inputs: start, then each drawn token
        state0 = jnp.full((b, length), PAD_ID, jnp.int32).at[:, 0].set(start_id)
    pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (k * b, length))
    mod = jnp.full((k * b, length), modality_id, jnp.int32)
    banned = np.zeros(vocab, bool)
    banned[list(suppress)] = True

    def body(carry):
        i, prev, out, done, state = carry
        if use_cache:
            args = (variables, context, cmask, state, _tile(prev, k), i)
            logits, state = cached_decode(*args, model=model, modality_id=modality_id)
        else:
            args = (context, cmask, _tile(state, k), mod, pos, pos <= i)
            full = model.apply(variables, *args, method=model.decode)
            logits = jax.lax.dynamic_index_in_dim(full, i, axis=1, keepdims=False)
        logits = combine_logits(logits[:, :vocab].reshape(k, b, vocab), weights)  # [B, V]
        logits = jnp.where(jnp.asarray(banned), -jnp.inf, logits)
        args = (jax.random.fold_in(key, i), logits, temperatures[i], top_k, top_p)
        tok = sample(*args, filter_first=filter_first)
        tok = jnp.where(forced_mask[:, i], forced[:, i], tok)
        stop = done | (tok == eos_id)
        out = out.at[:, i].set(jnp.where(stop, PAD_ID, tok))
        if not use_cache:
            state = state.at[:, i + 1].set(tok, mode="drop")
        return i + 1, tok, out, stop, state

    def running(carry):
        i, _, _, done, _ = carry
        return (i < length) & ~jnp.all(done)

    init = (
        jnp.int32(0),
        jnp.full((b,), start_id, jnp.int32),
        jnp.full((b, length), PAD_ID, jnp.int32),
        jnp.zeros((b,), bool),
        state0,
    )
    steps, _, out, _, _ = jax.lax.while_loop(running, body, init)
    return out, steps
