"""Logical axis rules: parameters and activations carry logical axis names ('embed', 'mlp',
'heads', 'kv', 'vocab', 'codebook', 'act_batch', ...); `config.sharding_rules` maps them to
mesh axes. Defined once here and applied to whole abstract states, so state is born sharded.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.parallel.mesh import DATA_AXES

# Data parallel over ('data', 'fsdp'); parameters sharded over 'fsdp' on their embedding
# axis (FSDP / ZeRO-3) and over 'tensor' on their wide axes (Megatron-style).
DEFAULT_RULES = (
    ("act_batch", DATA_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("codebook", None),
)


def _as_tuple(axes) -> tuple:
    if axes is None:
        return ()
    return tuple(axes) if isinstance(axes, list | tuple) else (axes,)


def logical_to_spec(names: Sequence, shape: Sequence[int], mesh, rules=DEFAULT_RULES) -> P:
    """PartitionSpec for one array: each logical name maps to its mesh axes, unless the
    dimension does not divide over them or an axis is already used (then replicated)."""
    table = {name: _as_tuple(axes) for name, axes in rules}
    used, out = set(), []
    for dim, name in zip(shape, names, strict=False):
        axes = tuple(a for a in table.get(name, ()) if a in mesh.shape and mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in axes) if axes else 1
        if not axes or dim % size or used & set(axes):
            out.append(None)
            continue
        used |= set(axes)
        out.append(axes[0] if len(axes) == 1 else axes)
    return P(*out)


def batch_sharding(mesh, shape: Sequence[int], rules=DEFAULT_RULES) -> NamedSharding:
    """The sharding of an input [B, ...]: B over the data axes ('act_batch'), replicated
    where it does not divide them (e.g. a batch of 1)."""
    return NamedSharding(mesh, logical_to_spec(("act_batch",), tuple(shape), mesh, rules))


def state_shardings(abstract_state, mesh, rules=DEFAULT_RULES):
    """NamedShardings for a (possibly boxed, from `jax.eval_shape`) state pytree: leaves
    annotated with `nn.with_logical_partitioning` follow the rules, the rest replicate."""
    specs = nn.get_partition_spec(abstract_state)
    values = nn.unbox(abstract_state)

    def one(spec, leaf):
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, logical_to_spec(tuple(spec), shape, mesh, rules))

    return jax.tree.map(one, specs, values, is_leaf=lambda x: isinstance(x, P))


def rules_from_config(config_rules) -> tuple:
    """config.sharding_rules, pairs (name, axes) with axes a mesh axis, several or None
    (replicated), -> a hashable rules tuple; None -> DEFAULT_RULES."""
    if config_rules is None:
        return DEFAULT_RULES
    rules = []
    for rule in config_rules:
        if not isinstance(rule, list | tuple) or len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(
                f"sharding_rules: each rule must be a pair (logical name, mesh axes), got {rule!r}"
            )
        name, axes = rule
        rules.append((name, tuple(axes) if isinstance(axes, list | tuple) else axes))
    return tuple(rules)
