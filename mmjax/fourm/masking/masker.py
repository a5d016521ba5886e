"""4M masking on the host: one example of per-modality tokens -> one static-shape masked sample.

Per example: pick a mixture component (among those the example's modalities can serve), split
the input budget over modalities with Dirichlet proportions, then the target budget (an image
modality's targets come from the tokens it did not give as inputs, so the two sets are
disjoint), and cut each modality accordingly:
- image tokens: a random permutation of the grid; the first tokens are inputs, the next targets
  (residual [h, w, depth] tokens: of the h * w * depth (cell, level) tokens, each its own);
- 1D image tokens (coarse to fine): per example either laid out as image tokens (a random
  permutation, every decoder input MASK_INPUT: MaskGIT) or, with probability `ar_rate_1d`,
  left to right (the first tokens are inputs, the next ones targets, each decoder input the
  token before it, MASK_INPUT at position 0: AR decoding), so one model learns both;
- sequences: T5-style span masking within the modality's input and target budgets;
- pixels (input only): a random subset of patch indices; the image itself goes out whole.
The output is the masked-batch dict described in `mmjax.fourm.modalities`.

Pure numpy, deterministic given the rng: it is a Grain `random_map` transform and runs in
data-loader workers.
"""

import operator
from collections.abc import Mapping

import numpy as np

from mmjax.fourm.masking.mixtures import build_mixture, sample_budgets
from mmjax.fourm.masking.ml4m_budgets import sample_budgets_clamped
from mmjax.fourm.masking.ml4m_spans import ml4m_span_mask
from mmjax.fourm.masking.spans import span_mask
from mmjax.fourm.modalities import IMAGE_TOKEN_KINDS, MASK_INPUT, Registry

_ENC = ("enc_tokens", "enc_modality", "enc_positions", "enc_mask")
_DEC = ("dec_input_tokens", "dec_target_tokens", "dec_modality", "dec_positions", "dec_mask")
_NO_CAP = np.iinfo(np.int64).max
BUDGET_RULES = ("fill", "ml4m")
SPAN_RULES = ("t5", "ml4m")


def _dtype(key: str):
    return bool if key.endswith("mask") else np.int32


def _budget(value, what: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an int, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


def _caps(value, registry: Registry, what: str) -> np.ndarray:
    """None (no cap), one int for every modality, or a mapping name -> int."""
    if value is None:
        return np.full(len(registry), _NO_CAP, np.int64)
    if isinstance(value, Mapping):
        for name in value:
            if name not in registry:
                raise ValueError(f"{what}: unknown modality {name!r}; have {list(registry.names)}")
        caps = [value.get(n, _NO_CAP) for n in registry.names]
    else:
        caps = [value] * len(registry)
    caps = np.asarray(caps, np.int64)
    if np.any(caps < 0):
        raise ValueError(f"{what} must be >= 0, got {value!r}")
    return caps


def check_length(spec, length: int) -> None:
    """Raises unless a `spec.name` record of `length` tokens fits: a sequence's max_length
    counts the eos its target ends with, so a record holds at most max_length - 1 tokens (fully
    masked, its target S_0 + record + eos takes max_length decoder positions, one per row of
    the modality's position table, and generation writes the record and its eos)."""
    if length > spec.max_length - 1:
        raise ValueError(
            f"modality {spec.name!r}: a record of {length} tokens does not fit max_length "
            f"{spec.max_length}, which holds at most {spec.max_length - 1} tokens plus the eos "
            f"a target ends with; set max_length >= {length + 1}"
        )


class FourMMasking:
    """A callable `(example, rng) -> masked sample` for `mmjax.data.build_dataset(transform=)`.

    input_budget / target_budget: E and T, the static encoder and decoder lengths. mixture: a
    preset name, a list of component dicts or a `Mixture`. max_input_tokens /
    max_target_tokens: optional per-modality caps (one int, or name -> int). For sequences, the
    input tokens and the decoder tokens (len(target) - 1) count toward the budgets, and a
    record holds at most max_length - 1 tokens (`check_length`).
    budget_rule: 'fill' (budgets always fill E and T where the example has the tokens) or
    'ml4m' (ml-4m's: clamped to each modality's static size, the excess left as padding;
    `masking.ml4m_budgets`). span_rule: 't5' (T5 spans, targets end with eos) or 'ml4m'
    (independent drops of record + eos, targets end with the next sentinel, cut by ml-4m's
    rule; `masking.ml4m_spans`). ar_rate_1d: the probability that a 1D image-token modality
    of an example is laid out left to right (AR) rather than as a random subset (MaskGIT).
    """

    def __init__(
        self,
        registry: Registry,
        input_budget: int,
        target_budget: int,
        mixture="all_to_all",
        sentinel_ids=(),
        eos_id: int | None = None,
        pad_id: int = 0,
        max_input_tokens=None,
        max_target_tokens=None,
        span_mean_length: float = 3.0,
        budget_rule: str = "fill",
        span_rule: str = "t5",
        ar_rate_1d: float = 0.5,
    ):
        self.registry = registry
        self.input_budget = _budget(input_budget, "input_budget")
        self.target_budget = _budget(target_budget, "target_budget")
        self.mixture = build_mixture(mixture, registry)
        self.weights, self.input_alphas, self.target_alphas = self.mixture.arrays()
        self.sentinel_ids = np.asarray(sentinel_ids, np.int64).reshape(-1)
        self.eos_id, self.pad_id = eos_id, int(pad_id)
        self.input_caps = _caps(max_input_tokens, registry, "max_input_tokens")
        self.target_caps = _caps(max_target_tokens, registry, "max_target_tokens")
        if span_mean_length < 1:
            raise ValueError(f"span_mean_length must be >= 1, got {span_mean_length}")
        self.span_mean_length = float(span_mean_length)
        if budget_rule not in BUDGET_RULES:
            raise ValueError(f"budget_rule must be one of {BUDGET_RULES}, got {budget_rule!r}")
        if span_rule not in SPAN_RULES:
            raise ValueError(f"span_rule must be one of {SPAN_RULES}, got {span_rule!r}")
        self.budget_rule, self.span_rule = budget_rule, span_rule
        if not 0.0 <= ar_rate_1d <= 1.0:
            raise ValueError(f"ar_rate_1d must lie in [0, 1], got {ar_rate_1d}")
        self.ar_rate_1d = float(ar_rate_1d)
        # the static per-modality sizes ml-4m clamps budgets to
        self._sizes = np.array([s.num_tokens for s in registry], np.int64)
        for s in registry:
            if s.kind != "sequence":
                continue
            if self.sentinel_ids.size == 0 or self.eos_id is None:
                raise ValueError(
                    f"sequence modality {s.name!r} needs sentinel_ids and eos_id for span masking"
                )
            special = np.append(self.sentinel_ids, self.eos_id)
            if special.min() < 0 or special.max() >= s.vocab_size:
                raise ValueError(
                    f"modality {s.name!r}: sentinel and eos ids must lie in [0, {s.vocab_size})"
                )
        self._is_image = np.array([s.kind in IMAGE_TOKEN_KINDS for s in registry])

    def _read(self, spec, x) -> np.ndarray:
        """The example's array for `spec`, checked: flat int64 tokens or float32 pixels."""
        x = np.asarray(x)
        where = f"modality {spec.name!r}"
        if spec.kind == "pixels":
            shape = (*spec.image_size, spec.channels)
            if x.shape != shape:
                raise ValueError(f"{where}: pixels must have shape {shape}, got {x.shape}")
            if x.dtype == np.uint8:
                return x.astype(np.float32) / 255.0
            if not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"{where}: pixels must be uint8 or float, got {x.dtype}")
            if not (x.min() >= 0 and x.max() <= 1):  # also catches NaN
                raise ValueError(
                    f"{where}: float pixels must lie in [0, 1], got [{x.min()}, {x.max()}]"
                )
            return x.astype(np.float32)
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{where}: tokens must be integers, got dtype {x.dtype}")
        if spec.kind == "image_tokens":  # [h, w] or residual [h, w, depth], depth-first
            x = spec.flatten_tokens(x, batched=False, what=where)
        elif spec.kind == "image_tokens_1d":
            if x.shape != spec.grid:
                raise ValueError(f"{where}: 1D tokens must have shape {spec.grid}, got {x.shape}")
        else:
            if x.ndim != 1:
                raise ValueError(f"{where}: a sequence must be 1-D, got shape {x.shape}")
            real = np.flatnonzero(x != self.pad_id)
            x = x[: real[-1] + 1 if len(real) else 0]  # strip trailing padding
            check_length(spec, len(x))
            if np.isin(x, self.sentinel_ids).any():
                raise ValueError(
                    f"{where}: the sequence contains sentinel ids (reserved for masking)"
                )
        if x.size and (x.min() < 0 or x.max() >= spec.vocab_size):
            raise ValueError(
                f"{where}: token ids must lie in [0, {spec.vocab_size}), got [{x.min()}, {x.max()}]"
            )
        return x.astype(np.int64)

    def _component(self, rng, cap_in, cap_tg, available) -> int:
        """A component drawn by weight among those with a usable input and target modality."""
        ok_in = ((self.input_alphas > 0) & (np.minimum(cap_in, self.input_caps) > 0)).any(1)
        ok_tg = ((self.target_alphas > 0) & (np.minimum(cap_tg, self.target_caps) > 0)).any(1)
        w = np.where(ok_in & ok_tg, self.weights, 0.0)
        if w.sum() == 0:
            raise ValueError(
                f"no mixture component can use this example: it has {available}, and every "
                "component needs an available input modality and target modality"
            )
        return int(rng.choice(len(w), p=w / w.sum()))

    def _budgets(self, rng, c: int, cap_in, cap_tg) -> tuple[np.ndarray, np.ndarray]:
        """(input, target) budgets [M] of component c for the example's capacities."""
        if self.budget_rule == "ml4m":  # static sizes; an image's targets exclude its inputs
            top_in = np.where(cap_in > 0, np.minimum(self._sizes, self.input_caps), 0)
            b_in = sample_budgets_clamped(rng, self.input_alphas[c], self.input_budget, top_in)
            sizes = np.where(self._is_image, self._sizes - b_in, self._sizes)
            top_tg = np.where(cap_tg > 0, np.minimum(sizes, self.target_caps), 0)
            b_tg = sample_budgets_clamped(rng, self.target_alphas[c], self.target_budget, top_tg)
            return b_in, b_tg
        b_in = sample_budgets(rng, self.input_alphas[c], self.input_budget, cap_in, self.input_caps)
        cap_tg = cap_tg - np.where(self._is_image, b_in, 0)
        caps_tg = self.target_caps
        return b_in, sample_budgets(rng, self.target_alphas[c], self.target_budget, cap_tg, caps_tg)

    def _layout_1d(self, x, n_in: int, n_tg: int, rng) -> tuple:
        """(input positions, target positions, decoder inputs) of a 1D token sequence: left to
        right with probability ar_rate_1d (inputs 0..n_in-1, targets the next n_tg, each
        decoder input the token before its target), else random subsets with every decoder
        input MASK_INPUT."""
        if rng.random() < self.ar_rate_1d:
            enc_pos, dec_pos = np.arange(n_in), np.arange(n_in, n_in + n_tg)
            before = np.concatenate([[MASK_INPUT], x])  # before[p] = token p - 1
            return enc_pos, dec_pos, before[dec_pos]
        order = rng.permutation(len(x))
        dec_pos = order[n_in : n_in + n_tg]
        return order[:n_in], dec_pos, np.full(len(dec_pos), MASK_INPUT, np.int64)

    def __call__(self, example: Mapping, rng: np.random.Generator) -> dict:
        specs = self.registry.specs
        data, cap_in, cap_tg = {}, np.zeros(len(specs), np.int64), np.zeros(len(specs), np.int64)
        ml4m_spans = self.span_rule == "ml4m"
        for i, s in enumerate(specs):
            if example.get(s.name) is None:
                continue  # unavailable: capacity 0
            data[s.name] = x = self._read(s, example[s.name])
            n = s.num_tokens if s.kind == "pixels" else len(x)
            cap_in[i] = n
            cap_tg[i] = 0 if s.kind == "pixels" else n + (s.kind == "sequence" and n > 0)
            if s.kind == "sequence" and ml4m_spans and n > 0:  # the eos is a token of the record
                cap_in[i], cap_tg[i] = n + 1, min(n + 2, s.max_length)
        c = self._component(rng, cap_in, cap_tg, sorted(data))
        b_in, b_tg = self._budgets(rng, c, cap_in, cap_tg)

        out = {k: np.zeros(self.input_budget, _dtype(k)) for k in _ENC}
        out |= {k: np.zeros(self.target_budget, _dtype(k)) for k in _DEC}
        e = d = 0
        for i, s in enumerate(specs):
            if s.kind == "pixels":
                x = data.get(s.name)
                out[f"pixels_{s.name}"] = (
                    x if x is not None else np.zeros((*s.image_size, s.channels), np.float32)
                )
            if b_in[i] == 0 and b_tg[i] == 0:
                continue
            x = data[s.name]
            if s.kind == "sequence":
                budgets = dict(input_budget=int(b_in[i]), target_budget=int(b_tg[i]))
                ids = dict(sentinel_ids=self.sentinel_ids, eos_id=self.eos_id)
                if ml4m_spans:
                    inp, tgt = ml4m_span_mask(x, rng, **budgets, **ids, max_positions=s.max_length)
                else:
                    span = self.span_mean_length
                    inp, tgt = span_mask(x, rng, **budgets, **ids, mean_span_length=span)
                enc_tok, enc_pos = inp, np.arange(len(inp))
                dec_in, dec_tg = tgt[:-1], tgt[1:]
                dec_pos = np.arange(len(dec_tg))
            elif s.kind == "image_tokens_1d":
                enc_pos, dec_pos, dec_in = self._layout_1d(x, int(b_in[i]), int(b_tg[i]), rng)
                enc_tok, dec_tg = x[enc_pos], x[dec_pos]
            else:
                order = rng.permutation(s.num_tokens)
                enc_pos = order[: b_in[i]]
                dec_pos = order[b_in[i] : b_in[i] + b_tg[i]]
                enc_tok = np.zeros(len(enc_pos), np.int64) if s.kind == "pixels" else x[enc_pos]
                dec_tg = x[dec_pos] if s.kind == "image_tokens" else dec_pos[:0]
                dec_in = np.zeros(len(dec_tg), np.int64)
            ne, nd = len(enc_tok), len(dec_tg)
            out["enc_tokens"][e : e + ne], out["enc_positions"][e : e + ne] = enc_tok, enc_pos
            out["enc_modality"][e : e + ne], out["enc_mask"][e : e + ne] = i, True
            out["dec_input_tokens"][d : d + nd] = dec_in
            out["dec_target_tokens"][d : d + nd], out["dec_positions"][d : d + nd] = dec_tg, dec_pos
            out["dec_modality"][d : d + nd], out["dec_mask"][d : d + nd] = i, True
            e, d = e + ne, d + nd
        return out
