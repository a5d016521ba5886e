"""`GenerationStep`: how `generate` produces one target modality, with mmjax's defaults and
ml-4m's conventions as options (`GenerationStep.ml4m` turns them all on)."""

import dataclasses

from mmjax.fourm.generation.guidance import normalize_guidance
from mmjax.fourm.generation.ml4m_schedules import ML4M_TOKEN_SCHEDULES
from mmjax.fourm.generation.sampling import (
    FILTER_ORDERS,
    TEMPERATURE_SCHEDULES,
    TOKEN_SCHEDULES,
)
from mmjax.fourm.generation.steps import CONFIDENCES

SCHEMES = ("maskgit", "roar", "ar", "ar_nocache")
PARALLEL_SCHEMES = ("maskgit", "roar")
ALL_TOKEN_SCHEDULES = TOKEN_SCHEDULES + ML4M_TOKEN_SCHEDULES
TEMPERATURE_DECAYS = ("steps", "tokens")
ROAR_DECODES = ("masked", "chosen")
DEPTH_ORDERS = ("joint", "coarse_first")


@dataclasses.dataclass(frozen=True)
class GenerationStep:
    """How to generate one target modality.

    target: modality name. scheme: one of SCHEMES; None picks maskgit for image tokens and
    ar for sequences. steps: rounds of maskgit / roar (<= the token count; ignored by ar,
    which takes one step per token). token_schedule: 'cosine' or 'linear' (maskgit / roar),
    or ml-4m's 'ml4m_cosine' (a half cosine) / 'ml4m_linear' (`generation.ml4m_schedules`).
    temperature (0 = greedy) and temperature_schedule ('constant', 'linear', 'onex'; over
    rounds, or over token positions for ar). top_k (0 = off), top_p (1 = off). guidance: a
    scale (1 = none) or a list of (condition names, weight) pairs.

    ml-4m's conventions (each an option; the defaults are mmjax's):
    temperature_decay: 'steps' decays with the round index; 'tokens' with the fraction of
      tokens left (ml-4m; onex then runs from `temperature` down to `temperature_min` with
      exponent `temperature_power`; ar keeps a constant temperature, as ml-4m does).
    filter_order: 'temperature_first' divides by the temperature, then filters top-k / top-p;
      'filter_first' filters the raw logits, then divides (ml-4m).
    confidence (maskgit): 'logprob' ranks draws by their untempered log-probability;
      'tempered_prob' by their probability under the tempered, filtered distribution (ml-4m).
    roar_decode: 'masked' decodes every masked position and commits a random subset;
      'chosen' picks the subset first and decodes only it (ml-4m).
    guidance_grow_conditioning: True drops every available modality in the unconditional
      variant, targets generated earlier in the chain included; False drops only the
      conditioning given to `generate` (ml-4m's cfg_grow_conditioning=False).
    guidance_text_sentinel: a dropped sequence condition reads as one start sentinel instead
      of nothing (ml-4m's empty text input).

    depth_order (maskgit / roar of residual image tokens, depth > 1): 'joint' commits
      (cell, level) tokens by confidence alone; 'coarse_first' commits every token of a
      coarser level before any of a finer one (by confidence, or at random for roar, within
      a level), so fine levels are drawn given the coarse image.
    """

    target: str
    scheme: str | None = None
    steps: int = 8
    token_schedule: str = "cosine"
    temperature: float = 1.0
    temperature_schedule: str = "constant"
    top_k: int = 0
    top_p: float = 1.0
    guidance: float | tuple = 1.0
    temperature_decay: str = "steps"
    temperature_min: float = 0.0
    temperature_power: float = 0.5
    filter_order: str = "temperature_first"
    confidence: str = "logprob"
    roar_decode: str = "masked"
    guidance_grow_conditioning: bool = True
    guidance_text_sentinel: bool = False
    depth_order: str = "joint"

    @classmethod
    def ml4m(cls, target: str, scheme: str | None = None, **fields) -> "GenerationStep":
        """A step with every ml-4m convention on (its token schedule: half cosine for
        maskgit, linear for roar, as ml-4m always uses for roar); `fields` override."""
        options = dict(
            token_schedule="ml4m_linear" if scheme == "roar" else "ml4m_cosine",
            temperature_decay="tokens",
            filter_order="filter_first",
            confidence="tempered_prob",
            roar_decode="chosen",
            guidance_grow_conditioning=False,
            guidance_text_sentinel=True,
        )
        return cls(target, scheme, **(options | fields))

    def __post_init__(self):
        where = f"GenerationStep({self.target!r})"

        def one_of(field, allowed):
            return getattr(self, field) in allowed, f"{field} must be one of {allowed}"

        checks = [
            (self.scheme is None or self.scheme in SCHEMES, f"scheme must be one of {SCHEMES}"),
            one_of("token_schedule", ALL_TOKEN_SCHEDULES),
            one_of("temperature_schedule", TEMPERATURE_SCHEDULES),
            one_of("temperature_decay", TEMPERATURE_DECAYS),
            one_of("filter_order", FILTER_ORDERS),
            one_of("confidence", CONFIDENCES),
            one_of("roar_decode", ROAR_DECODES),
            one_of("depth_order", DEPTH_ORDERS),
            (isinstance(self.steps, int) and self.steps >= 1, "steps must be an int >= 1"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.temperature_min >= 0, "temperature_min must be >= 0"),
            (self.temperature_power > 0, "temperature_power must be > 0"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an int >= 0"),
            (0 < self.top_p <= 1, "top_p must lie in (0, 1]"),
            (isinstance(self.guidance_grow_conditioning, bool), "guidance_grow_conditioning: bool"),
            (isinstance(self.guidance_text_sentinel, bool), "guidance_text_sentinel: a bool"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"{where}: {msg}; got {self}")
        object.__setattr__(self, "guidance", normalize_guidance(self.guidance))
