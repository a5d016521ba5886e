"""Classifier-free guidance for 4M generation, as conditioning variants and weights.

Every form of guidance is a linear combination of the logits of K conditioning variants (a
variant = the set of conditioning modalities the encoder sees):
- a scale s: logits = uncond + s * (cond - uncond) = s * cond + (1 - s) * uncond, with
  variants (all conditions, none); s = 1 is plain conditional sampling and runs one variant
  only, so it is exactly "no guidance".
- multi-condition guidance, a list of (condition subset, weight w_i):
  logits = uncond + sum_i w_i * (cond_i - uncond), variants (none, subset_1, ..., subset_n)
  with weights (1 - sum_i w_i, w_1, ..., w_n). Negative weights push away from a condition.
"Unconditional" removes the conditioning modalities only: for MaskGIT / ROAR the tokens of
the target that are already committed (and the known tokens when editing) stay in the
encoder, as in 4M. The variants run as one batch of K * B rows through the model.
"""

from collections.abc import Sequence

import numpy as np


def normalize_guidance(guidance) -> float | tuple:
    """A hashable form of a guidance spec: a float scale, or a tuple of (tuple of names,
    float weight) pairs. Raises ValueError for anything else."""
    if isinstance(guidance, int | float | np.floating | np.integer) and not isinstance(
        guidance, bool
    ):
        return float(guidance)
    if isinstance(guidance, Sequence) and not isinstance(guidance, str) and guidance:
        out = []
        for item in guidance:
            ok = isinstance(item, Sequence) and len(item) == 2 and not isinstance(item, str)
            if ok:
                names, weight = item
                if isinstance(names, str):
                    names = (names,)
                ok = isinstance(weight, int | float | np.floating | np.integer)
            if not ok:
                raise ValueError(
                    f"guidance entries must be (condition names, weight) pairs, got {item!r}"
                )
            out.append((tuple(str(n) for n in names), float(weight)))
        return tuple(out)
    raise ValueError(
        "guidance must be a scale (float) or a non-empty list of (condition names, weight) "
        f"pairs, got {guidance!r}"
    )


def guidance_variants(
    guidance, available: Sequence[str], target: str
) -> tuple[tuple[tuple[str, ...], ...], np.ndarray]:
    """(variants, weights [K] float32) for a normalized guidance spec, given the condition
    names `available` when `target` is generated. A subset naming a modality that is not
    available raises ValueError naming it."""
    available = tuple(available)
    if isinstance(guidance, float):
        if guidance == 1.0 or not available:  # nothing to guide with: plain sampling
            return (available,), np.ones(1, np.float32)
        return (available, ()), np.array([guidance, 1.0 - guidance], np.float32)
    variants, weights = [()], [1.0 - sum(w for _, w in guidance)]
    for names, w in guidance:
        missing = [n for n in names if n not in available]
        if missing:
            raise ValueError(
                f"guidance for {target!r} names condition(s) {missing} that are not "
                f"available; the conditioning at this point is {list(available)}"
            )
        variants.append(names)
        weights.append(w)
    return tuple(variants), np.asarray(weights, np.float32)
