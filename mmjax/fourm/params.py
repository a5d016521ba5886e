"""Parameter counts of FourM presets, from `jax.eval_shape` (nothing is allocated).

    python -m mmjax.fourm.params --preset base
    python -m mmjax.fourm.params --preset all

uses the 4M-7-like registry of `fourm7_modalities()`. "Trunk" is what 4M's published sizes
count: encoder and decoder blocks, their final norms and the decoder context projection;
"embeddings" and "heads" are the per-modality adapters (register tokens, when a model has
them, count as embeddings).
"""

import argparse
import math

import flax.linen as nn
import jax

from mmjax.fourm.modalities import Registry, build_registry, fourm7_modalities
from mmjax.fourm.model import FourM, abstract_variables
from mmjax.fourm.presets import PRESETS, PUBLISHED_TRUNK_PARAMS, build_fourm

TRUNK_PREFIXES = ("encoder_blocks_", "decoder_blocks_", "encoder_norm", "decoder_norm",
                  "context_proj")  # fmt: skip


def abstract_params(model: FourM) -> dict:
    """The (unboxed) parameter shapes of `model`, via jax.eval_shape."""
    return nn.unbox(abstract_variables(model)["params"])


def param_counts(model: FourM) -> dict[str, int]:
    """{'trunk', 'embeddings', 'heads', 'total'} parameter counts of `model`."""
    counts = {"trunk": 0, "embeddings": 0, "heads": 0}
    for name, tree in abstract_params(model).items():
        n = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
        group = "trunk" if name.startswith(TRUNK_PREFIXES) else name
        group = "embeddings" if name == "register_tokens" else group
        counts[group] += n
    counts["total"] = sum(counts.values())
    return counts


def preset_table(registry: Registry, presets=None) -> str:
    """A text table of the parameter counts of `presets` (default: all)."""
    rows = [f"{'preset':<8} {'trunk':>14} {'published':>10} {'embeddings':>12} {'heads':>12} "
            f"{'total':>14}"]  # fmt: skip
    for name in presets or PRESETS:
        c = param_counts(build_fourm({"size": name}, registry))
        pub = PUBLISHED_TRUNK_PARAMS.get(name)
        pub_s = "-" if not pub else f"{pub / 1e9:.1f}B" if pub >= 1e9 else f"{pub / 1e6:.0f}M"
        rows.append(
            f"{name:<8} {c['trunk']:>14,} {pub_s:>10} {c['embeddings']:>12,} {c['heads']:>12,} "
            f"{c['total']:>14,}"
        )
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mmjax.fourm.params",
        description="Prints the parameter counts of FourM presets (trunk, per-modality "
        "embeddings and heads, total) with the 4M-7-like registry, beside 4M's published trunk "
        "sizes. Shapes come from jax.eval_shape: nothing is allocated.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--preset", default="all", choices=[*PRESETS, "all"], help="which preset to count"
    )
    args = parser.parse_args(argv)
    registry = build_registry(fourm7_modalities())
    print(f"registry: {', '.join(registry.names)}")
    print(preset_table(registry, None if args.preset == "all" else [args.preset]))


if __name__ == "__main__":
    main()
