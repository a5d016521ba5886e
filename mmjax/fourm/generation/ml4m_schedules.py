"""ml-4m's token and temperature schedules for MaskGIT / ROAR, as options of `GenerationStep`.

Token schedules (how many tokens each step commits), for U unknown tokens in S steps:
- `ml4m_cosine`: a half cosine. The masked fraction before step s is (1 + cos(pi s / S)) / 2;
  step s < S - 1 commits round(U * (that fraction - the next one)) (half to even), the last
  step what is left. For 256 tokens in 8 steps: 10, 28, 42, 49, 49, 42, 28, 8, where
  mmjax's `cosine` (MaskGIT's quarter cosine) commits 5, 14, 24, 32, 39, 44, 48, 50.
- `ml4m_linear`: the differences of int(linspace(0, U, S + 1)) sorted largest first; ml-4m
  drops trailing zero steps, here they stay as steps that commit nothing.
Temperatures decayed with the fraction of tokens left (`temperature_decay="tokens"`), where
mmjax's own schedules decay with the step index:
- linear: step 0 runs at tau, step s at tau * (tokens left before step s) / U.
- onex: y = 1 / x**power on x = linspace(1, 100, U), rescaled to [0, 1]; step s runs at
  min_t + (tau - min_t) * y[s] * (tokens left after step s) / U (ml-4m pairs step s with
  y[s], the s-th of U points); steps past U run at min_t.
- constant: tau. Both clip at 1e-9 as ml-4m does, so a decayed step still samples.
Everything here is host numpy: the schedules depend on the token counts only.
"""

import math

import numpy as np

ML4M_TOKEN_SCHEDULES = ("ml4m_cosine", "ml4m_linear")
_MIN_TEMPERATURE = 1e-9  # ml-4m's clip


def ml4m_token_schedule(total: int, steps: int, kind: str) -> np.ndarray:
    """int64 [steps]: tokens committed at each step for `total` unknown tokens (see the module
    docstring). Raises ValueError where ml-4m's cosine rounding would leave a negative count
    for the last step (few tokens over many steps)."""
    if kind not in ML4M_TOKEN_SCHEDULES:
        raise ValueError(f"token schedule must be one of {ML4M_TOKEN_SCHEDULES}, got {kind!r}")
    if steps < 1 or total < 0:
        raise ValueError(f"steps must be >= 1 and total >= 0, got {steps}, {total}")
    if kind == "ml4m_cosine":
        masked = [0.5 * (1.0 + math.cos(math.pi * s / steps)) for s in range(steps)]
        counts = [round(total * (masked[s] - masked[s + 1])) for s in range(steps - 1)]
        counts.append(total - sum(counts))
        if counts[-1] < 0:
            raise ValueError(
                f"token schedule 'ml4m_cosine' rounds to more than {total} tokens before the "
                f"last of {steps} steps; use fewer steps or another token_schedule"
            )
        return np.asarray(counts, np.int64)
    edges = np.linspace(0, total, steps + 1).astype(np.int64)  # truncation, as dtype=int
    return -np.sort(-np.diff(edges))


def ml4m_commit_counts(num_unknown, steps: int, kind: str) -> np.ndarray:
    """int32 [steps, B]: `ml4m_token_schedule` of each row's unknown-token count [B]."""
    u = np.asarray(num_unknown, np.int64).reshape(-1)
    out = np.zeros((steps, len(u)), np.int32)
    for total in np.unique(u):
        out[:, u == total] = ml4m_token_schedule(int(total), steps, kind)[:, None]
    return out


def token_fraction_temperatures(
    temperature: float,
    counts: np.ndarray,
    kind: str = "constant",
    min_temperature: float = 0.0,
    power: float = 0.5,
) -> np.ndarray:
    """float32 [steps, B]: ml-4m's per-step temperatures for the commit counts [steps, B]
    (each row's own token total), decayed with the fraction of tokens left (module
    docstring). kind: 'constant', 'linear' or 'onex'."""
    counts = np.asarray(counts, np.int64)
    if counts.ndim == 1:
        counts = counts[:, None]
    if kind not in ("constant", "linear", "onex"):
        raise ValueError(f"temperature schedule must be constant, linear or onex, got {kind!r}")
    steps, rows = counts.shape
    if kind == "constant":
        return np.full((steps, rows), temperature, np.float32)
    out = np.empty((steps, rows), np.float64)
    for b in range(rows):
        total = int(counts[:, b].sum())
        done = np.cumsum(counts[:, b]) / max(total, 1)  # fraction committed after each step
        if kind == "linear":
            out[:, b] = temperature * (1.0 - np.concatenate([[0.0], done[:-1]]))
        else:
            y = 1.0 / np.linspace(1, 100, total) ** power
            y = y - y.min() if total else y
            y = y / y.max() if total and y.max() > 0 else np.zeros_like(y)  # U = 1: y = [0]
            shape = np.zeros(steps)
            m = min(steps, total)
            shape[:m] = (1.0 - done[:m]) * y[:m]
            out[:, b] = min_temperature + (temperature - min_temperature) * shape
    return np.clip(out, _MIN_TEMPERATURE, None).astype(np.float32)
