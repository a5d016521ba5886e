"""Sampling pieces of 4M generation: temperature schedules, top-k / top-p filtering, token
schedules (how many tokens MaskGIT / ROAR commit at each step), and the sampler (temperature
then filters, or ml-4m's filters then temperature; `filtered_logits`).

Everything that runs inside a generation step is jittable with traced temperature, top-k
and top-p values, so one compiled step serves every step of a schedule.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

TEMPERATURE_SCHEDULES = ("constant", "linear", "onex")
TOKEN_SCHEDULES = ("cosine", "linear")


def temperature_schedule(temperature: float, num_steps: int, kind: str = "constant") -> np.ndarray:
    """Per-step temperatures [num_steps] float32 for step t = 0 .. num_steps - 1.

    constant: tau.  linear: tau * (1 - t / num_steps) (decays towards 0 but stays > 0, so the
    last step still samples).  onex: tau / (1 + t) (1/x decay: fast at first, then slow).
    High temperature early gives diversity while little is decided; low temperature late
    gives coherent details once the layout is fixed.
    """
    if kind not in TEMPERATURE_SCHEDULES:
        raise ValueError(
            f"temperature schedule must be one of {TEMPERATURE_SCHEDULES}, got {kind!r}"
        )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    t = np.arange(num_steps, dtype=np.float64)
    if kind == "constant":
        out = np.full(num_steps, temperature)
    elif kind == "linear":
        out = temperature * (1.0 - t / num_steps)
    else:
        out = temperature / (1.0 + t)
    return out.astype(np.float32)


def _fraction_done(t: np.ndarray, steps: int, kind: str) -> np.ndarray:
    """Fraction of the tokens committed after step t (1-based) of `steps`."""
    if kind == "cosine":  # MaskGIT: the masked fraction after step t is cos(pi/2 * t / steps)
        return 1.0 - np.cos(0.5 * math.pi * t / steps)
    return t / steps


def commit_counts(num_unknown, steps: int, kind: str = "cosine") -> jax.Array:
    """How many tokens to commit at each step: int32 [steps, B] for `num_unknown` [B] (or a
    scalar: [steps]) still-masked tokens.

    The cumulative count after step t is round(U * f(t / steps)) (f from the token schedule),
    then raised to at least one more than the previous step and capped so that every later
    step can still commit one token; the last step ends at U. So each step commits >= 1 token
    and all U are committed after `steps`. A row with fewer unknown tokens than steps (possible
    when editing) commits one token per step until it is done, then zero.
    """
    if kind not in TOKEN_SCHEDULES:
        raise ValueError(f"token schedule must be one of {TOKEN_SCHEDULES}, got {kind!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    u = jnp.asarray(num_unknown, jnp.int32)
    frac = _fraction_done(np.arange(1, steps + 1, dtype=np.float64), steps, kind)
    cum, prev = [], jnp.zeros_like(u)
    for t in range(1, steps + 1):
        target = jnp.round(u * frac[t - 1]).astype(jnp.int32)
        capped = jnp.minimum(jnp.maximum(target, prev + 1), u - (steps - t))
        c = jnp.where(u >= steps, capped, jnp.minimum(t, u))
        c = u if t == steps else c
        cum.append(c)
        prev = c
    cum = jnp.stack(cum)
    return jnp.diff(cum, axis=0, prepend=jnp.zeros_like(cum[:1]))


def top_k_filter(logits: jax.Array, k) -> jax.Array:
    """Logits [..., V] with all but the k largest set to -inf (ties at the k-th value are all
    kept); k <= 0 or k >= V keeps everything. k may be traced."""
    v = logits.shape[-1]
    k = jnp.asarray(k, jnp.int32)

    def apply(logits):
        desc = -jnp.sort(-logits, axis=-1)
        kth = jnp.take(desc, jnp.clip(k, 1, v) - 1, axis=-1)[..., None]
        return jnp.where(logits >= kth, logits, -jnp.inf)

    # a real branch, so the sort is skipped when the filter is off
    return jax.lax.cond((k > 0) & (k < v), apply, lambda x: x, logits)


def top_p_filter(logits: jax.Array, p) -> jax.Array:
    """Nucleus filter: keeps the smallest set of most likely tokens whose probability mass is
    >= p (the largest token always stays); the rest become -inf. p >= 1 keeps everything.
    p may be traced."""
    p = jnp.asarray(p, jnp.float32)

    def apply(logits):
        desc = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(desc.astype(jnp.float32), axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        count = jnp.maximum(jnp.sum(mass_before < p, axis=-1, keepdims=True), 1)
        threshold = jnp.take_along_axis(desc, count - 1, axis=-1)
        return jnp.where(logits >= threshold, logits, -jnp.inf)

    return jax.lax.cond(p < 1.0, apply, lambda x: x, logits)


FILTER_ORDERS = ("temperature_first", "filter_first")


def filtered_logits(logits: jax.Array, temperature, top_k=0, top_p=1.0, filter_first=False):
    """The logits [..., V] a token is drawn from: divided by the temperature (broadcast to
    logits.shape[:-1]) and top-k / top-p filtered (-inf outside). temperature_first (mmjax):
    divide, then filter; filter_first (ml-4m): filter the raw logits, then divide, so top-p
    measures the mass of the untempered distribution."""
    t = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), logits.shape[:-1])
    t = jnp.maximum(t, 1e-6)[..., None]
    logits = logits.astype(jnp.float32)
    if filter_first:
        return top_p_filter(top_k_filter(logits, top_k), top_p) / t
    return top_p_filter(top_k_filter(logits / t, top_k), top_p)


def sample_with_probs(key, logits, temperature, top_k=0, top_p=1.0, filter_first=False):
    """(token ids [...], probability [...] of each drawn token under the tempered, filtered
    distribution it was drawn from) for logits [..., V]. Temperature 0 is greedy, with
    probability 1 for every draw (as ml-4m scores greedy draws)."""
    dist = filtered_logits(logits, temperature, top_k, top_p, filter_first)
    drawn = jax.random.categorical(key, dist, axis=-1)
    hot = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), logits.shape[:-1]) > 0
    tokens = jnp.where(hot, drawn, jnp.argmax(logits, axis=-1)).astype(jnp.int32)
    probs = jax.nn.softmax(dist, axis=-1)
    p = jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
    return tokens, jnp.where(hot, p, 1.0)


def sample(key, logits: jax.Array, temperature, top_k=0, top_p=1.0, filter_first=False):
    """Token ids [...] from logits [..., V]: divide by the temperature, keep the top-k, then
    the top-p nucleus, and draw (`filter_first`: filter, then divide). Temperature 0 is
    greedy (argmax, same as top_k=1); it may be a scalar or broadcast to logits.shape[:-1]."""
    return sample_with_probs(key, logits, temperature, top_k, top_p, filter_first)[0]


def combine_logits(logits: jax.Array, weights) -> jax.Array:
    """Classifier-free guidance as one linear combination: logits [K, ...] of K conditioning
    variants, weights [K] (they sum to 1) -> sum_k weights[k] * logits[k]."""
    w = jnp.asarray(weights, jnp.float32).reshape((-1,) + (1,) * (logits.ndim - 1))
    return jnp.sum(w * logits.astype(jnp.float32), axis=0)
