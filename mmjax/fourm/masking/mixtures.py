"""Mixtures of Dirichlet settings for 4M masking, and the Dirichlet token-budget sampler.

4M spreads a sample's input budget (and, separately, its target budget) over modalities with
proportions drawn from a Dirichlet distribution. A small alpha makes most samples use one or
two modalities; a large alpha spreads tokens evenly. A mixture picks one setting per sample.

Pure numpy: this runs in Grain data-loader workers.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mmjax.fourm.modalities import Registry

_FIELDS = ("weight", "input_alphas", "target_alphas")


@dataclasses.dataclass(frozen=True)
class Component:
    """One Dirichlet setting: chosen with probability weight / sum(weights). Modalities not
    listed in a role get alpha 0 there (never any budget in that role)."""

    weight: float
    input_alphas: Mapping[str, float]
    target_alphas: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class Mixture:
    """A validated mixture of `Component`s over the modalities of `registry`."""

    registry: Registry
    components: tuple[Component, ...]

    def __post_init__(self):
        comps = tuple(self.components)
        if not comps:
            raise ValueError("a mixture needs at least one component")
        for i, c in enumerate(comps):
            where = f"mixture component {i}"
            if not np.isfinite(c.weight) or c.weight <= 0:
                raise ValueError(f"{where}: weight must be > 0, got {c.weight}")
            for role in ("input", "target"):
                alphas = dict(getattr(c, f"{role}_alphas"))
                for name, a in alphas.items():
                    if name not in self.registry:
                        raise ValueError(
                            f"{where}: unknown modality {name!r} in {role}_alphas; the registry "
                            f"has {list(self.registry.names)}"
                        )
                    if not np.isfinite(a) or a < 0:
                        raise ValueError(f"{where}: {role} alpha of {name!r} must be >= 0, got {a}")
                    if role == "target" and a > 0 and not self.registry[name].is_target:
                        raise ValueError(
                            f"{where}: modality {name!r} is {self.registry[name].kind!r}, which is "
                            f"input only; its target alpha must be 0, got {a}"
                        )
                if not any(a > 0 for a in alphas.values()):
                    raise ValueError(f"{where}: {role}_alphas needs at least one alpha > 0")
        object.__setattr__(self, "components", comps)

    @classmethod
    def from_config(cls, components: Sequence[Mapping], registry: Registry) -> "Mixture":
        """From a list of dicts with keys `weight` (default 1), `input_alphas`, `target_alphas`
        (each a mapping modality -> alpha), as written in a config file."""
        comps = []
        for i, d in enumerate(components):
            d = dict(d)
            unknown = set(d) - set(_FIELDS)
            if unknown:
                raise ValueError(f"mixture component {i}: unknown key(s) {sorted(unknown)}")
            for key in ("input_alphas", "target_alphas"):
                if key not in d:
                    raise ValueError(f"mixture component {i}: missing {key!r}")
            comps.append(
                Component(
                    weight=float(d.get("weight", 1.0)),
                    input_alphas={k: float(v) for k, v in dict(d["input_alphas"]).items()},
                    target_alphas={k: float(v) for k, v in dict(d["target_alphas"]).items()},
                )
            )
        return cls(registry, tuple(comps))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weights [C], input alphas [C, M], target alphas [C, M]), M in registry order."""
        names = self.registry.names
        w = np.array([c.weight for c in self.components], np.float64)
        a_in = np.array([[c.input_alphas.get(n, 0.0) for n in names] for c in self.components])
        a_tg = np.array([[c.target_alphas.get(n, 0.0) for n in names] for c in self.components])
        return w, a_in.astype(np.float64), a_tg.astype(np.float64)


def _targets(registry: Registry) -> list[str]:
    return [s.name for s in registry if s.is_target]


def all_to_all(registry: Registry, alpha: float = 0.5) -> Mixture:
    """Every modality as input, every targetable modality as target, one symmetric alpha."""
    comp = Component(
        1.0, dict.fromkeys(registry.names, alpha), dict.fromkeys(_targets(registry), alpha)
    )
    return Mixture(registry, (comp,))


def all_to_all_multi(registry: Registry) -> Mixture:
    """4M's mixture of symmetric Dirichlets, alpha in (0.01, 0.1, 1, 10) with equal weights:
    from nearly single-modality samples to evenly spread ones."""
    comps = [all_to_all(registry, a).components[0] for a in (0.01, 0.1, 1.0, 10.0)]
    return Mixture(registry, tuple(comps))


def _rgb_name(registry: Registry) -> str:
    pixels = [s.name for s in registry if s.kind == "pixels"]
    if "rgb" in pixels:
        return "rgb"
    if len(pixels) == 1:
        return pixels[0]
    if "tok_rgb" in registry:
        return "tok_rgb"
    raise ValueError(
        f"rgb_to_all needs a 'rgb' pixels modality, a single pixels modality or 'tok_rgb'; the "
        f"registry has {list(registry.names)}"
    )


def rgb_to_all(registry: Registry, alpha: float = 0.5) -> Mixture:
    """Only the rgb modality as input (the `pixels` one if present, else `tok_rgb`), all
    targetable modalities as targets: the setting for RGB-conditioned prediction."""
    comp = Component(1.0, {_rgb_name(registry): 1.0}, dict.fromkeys(_targets(registry), alpha))
    return Mixture(registry, (comp,))


def caption_biased(registry: Registry, caption: str = "caption", alpha: float = 0.5) -> Mixture:
    """Half the samples all-to-all (alpha 0.5), a quarter caption -> everything else (text to
    image and to the other modalities), a quarter everything else -> caption only (captioning).

    The bias makes text-conditioned generation and captioning, the two uses people try first,
    well trained without giving up the all-to-all samples that teach cross-modal prediction.
    """
    if caption not in registry or not registry[caption].is_target:
        raise ValueError(f"caption_biased needs a targetable {caption!r} modality in the registry")
    others = [n for n in registry.names if n != caption]
    other_targets = [n for n in _targets(registry) if n != caption]
    if not other_targets:
        raise ValueError(f"caption_biased needs a targetable modality other than {caption!r}")
    comps = (
        dataclasses.replace(all_to_all(registry, alpha).components[0], weight=0.5),
        Component(0.25, {caption: 1.0}, dict.fromkeys(other_targets, alpha)),
        Component(0.25, dict.fromkeys(others, alpha), {caption: 1.0}),
    )
    return Mixture(registry, comps)


def rgb_caption_biased(registry: Registry, caption: str = "caption", alpha: float = 0.5) -> Mixture:
    """For small budgets of compute: 40% rgb -> everything (the whole image in, as at test
    time), 20% caption -> everything else, 40% all-to-all (alpha 0.5) for chained and
    partial conditioning. With all-to-all alone, the rgb input gets ~1/8 of the input budget,
    so a target token rarely sits under a visible patch and a briefly trained model predicts
    the scene prior (floor and sky) instead of the objects it was shown."""
    base = caption_biased(registry, caption, alpha).components
    comps = (
        dataclasses.replace(rgb_to_all(registry, alpha).components[0], weight=0.4),
        dataclasses.replace(base[1], weight=0.2),
        dataclasses.replace(base[0], weight=0.4),
    )
    return Mixture(registry, comps)


def rgb_text_biased(
    registry: Registry, text: tuple = ("caption", "boxes"), text_alpha: float = 1.5
) -> Mixture:
    """`rgb_caption_biased` whose rgb -> everything component gives the text targets in `text`
    (those in the registry) Dirichlet alpha `text_alpha` instead of 0.5: with seven targets
    and 1.5 for caption and boxes, each gets about 27% of that component's target budget
    instead of 14%. Writing a whole caption or box list from an image takes tens of tokens
    per sample, more than an even split of a small target budget gives."""
    mix = rgb_caption_biased(registry)
    first = mix.components[0]
    targets = dict(first.target_alphas)
    for name in text:
        if name in targets:
            targets[name] = text_alpha
    return Mixture(
        registry, (dataclasses.replace(first, target_alphas=targets), *mix.components[1:])
    )


def rgb_first(registry: Registry, weights: tuple = (0.6, 0.2, 0.2)) -> Mixture:
    """`rgb_text_biased` with component weights `weights` (rgb -> everything, caption ->
    everything else, all-to-all) instead of 0.4 / 0.2 / 0.4: for a model whose main use is
    predicting the other modalities from an image (measured in docs/experiments.md)."""
    mix = rgb_text_biased(registry)
    if len(weights) != len(mix.components) or min(weights) <= 0:
        raise ValueError(
            f"rgb_first takes {len(mix.components)} positive weights (rgb -> everything, "
            f"caption -> everything else, all-to-all), got {weights!r}"
        )
    comps = tuple(
        dataclasses.replace(c, weight=float(w))
        for c, w in zip(mix.components, weights, strict=True)
    )
    return Mixture(registry, comps)


MIXTURES: dict[str, Callable[[Registry], Mixture]] = {
    "all_to_all": all_to_all,
    "all_to_all_multi": all_to_all_multi,
    "rgb_to_all": rgb_to_all,
    "caption_biased": caption_biased,
    "rgb_caption_biased": rgb_caption_biased,
    "rgb_text_biased": rgb_text_biased,
    "rgb_first": rgb_first,
}


def build_mixture(name_or_list, registry: Registry) -> Mixture:
    """A preset by name (see MIXTURES), a list of component dicts, or a Mixture as is."""
    if isinstance(name_or_list, Mixture):
        if name_or_list.registry != registry:
            raise ValueError("the mixture was built for a different modality registry")
        return name_or_list
    if isinstance(name_or_list, str):
        if name_or_list not in MIXTURES:
            raise ValueError(f"unknown mixture {name_or_list!r}; known: {sorted(MIXTURES)}")
        return MIXTURES[name_or_list](registry)
    return Mixture.from_config(list(name_or_list), registry)


def sample_dirichlet(rng: np.random.Generator, alphas) -> np.ndarray:
    """Dirichlet(alphas) for alphas > 0, robust to tiny alphas (0.01).

    numpy's dirichlet returns NaN when every gamma draw underflows to 0, which tiny alphas make
    common. Here log Gamma(a) = log Gamma(a + 1) + log(U) / a (U uniform in (0, 1]), and the
    proportions are a softmax of those logs: exact in distribution, never NaN.
    """
    a = np.asarray(alphas, np.float64)
    log_g = np.log(rng.gamma(a + 1.0)) + np.log1p(-rng.random(a.shape)) / a
    log_g -= log_g.max()
    p = np.exp(log_g)
    return p / p.sum()


def budget_arrays(alphas, sizes, total: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(float64 alphas, int64 sizes), checked: equal 1-D, alphas finite and >= 0, sizes and
    `total` >= 0 (`what` names the sizes in the messages)."""
    alphas = np.asarray(alphas, np.float64)
    sizes = np.asarray(sizes, np.int64)
    if alphas.ndim != 1 or sizes.shape != alphas.shape:
        raise ValueError(f"alphas {alphas.shape} and {what} {sizes.shape} must be equal 1-D")
    if not np.all(np.isfinite(alphas)) or np.any(alphas < 0):
        raise ValueError(f"alphas must be finite and >= 0, got {alphas}")
    if np.any(sizes < 0) or total < 0:
        raise ValueError(f"total and {what} must be >= 0, got {total}, {sizes}")
    return alphas, sizes


def sample_budgets(
    rng: np.random.Generator, alphas, total: int, capacities, caps=None
) -> np.ndarray:
    """Split `total` tokens over modalities with Dirichlet(alphas) proportions. int64 [M].

    Only modalities with alpha > 0 and room (capacity, i.e. available tokens, and the optional
    per-modality cap, both > 0) take part; the others get 0. Budgets are floor(p * total),
    clipped to each modality's room; what is left goes to modalities with room, again in
    proportion to p (then one token each by largest p), so the budgets sum exactly to
    min(total, the participants' total room).
    """
    alphas, room = budget_arrays(alphas, capacities, total, "capacities")
    if caps is not None:
        room = np.minimum(room, np.asarray(caps, np.int64))
    budgets = np.zeros(alphas.shape, np.int64)
    on = np.flatnonzero((alphas > 0) & (room > 0))
    if len(on) == 0:
        return budgets
    room = room[on]
    p = sample_dirichlet(rng, alphas[on])
    left = int(min(total, room.sum()))
    b = np.zeros(len(on), np.int64)
    while left > 0:
        spare = room - b
        w = np.where(spare > 0, p, 0.0)
        w = w / w.sum() if w.sum() > 0 else (spare > 0) / np.count_nonzero(spare)
        add = np.minimum(np.floor(w * left).astype(np.int64), spare)
        if add.sum() == 0:  # fewer tokens than takers: one each, largest share first
            order = np.argsort(-w, kind="stable")[:left]
            add[order] = 1
        b += add
        left -= int(add.sum())
    budgets[on] = b
    return budgets
