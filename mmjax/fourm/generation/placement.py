"""Generation on a device mesh: a FourM's parameters placed by the logical axis rules, the
batch split over the data axes.

`generate` and `image_token_log_probs` take `mesh=` (and `rules=`); with a mesh they place the
variables and the conditioning with these functions and trace their jitted steps under
`jax.set_mesh(mesh)`, so the model's activation and KV-cache constraints apply. Placing
arrays that already have the target sharding (e.g. a bundle restored onto the mesh) costs
nothing.
"""

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from mmjax.fourm.model import FourM, abstract_variables
from mmjax.parallel import DEFAULT_RULES, batch_sharding, rules_from_config, state_shardings


def with_rules(model: FourM, rules=None) -> FourM:
    """`model` carrying `rules` as its sharding_rules (default: its own, else DEFAULT_RULES),
    so that its activation constraints are active under a mesh."""
    rules = (model.sharding_rules or DEFAULT_RULES) if rules is None else rules_from_config(rules)
    return model if model.sharding_rules == rules else model.clone(sharding_rules=rules)


def variable_shardings(model: FourM, mesh: Mesh):
    """NamedShardings of `model`'s variables on `mesh` from its sharding_rules."""
    return state_shardings(abstract_variables(model), mesh, model.sharding_rules or DEFAULT_RULES)


def place_variables(model: FourM, variables, mesh: Mesh, rules=None) -> tuple[FourM, dict]:
    """(model with the rules, variables on `mesh` sharded by them). Raises ValueError when
    the variables are not `model`'s (another size or registry)."""
    model = with_rules(model, rules)
    shardings = variable_shardings(model, mesh)
    variables = nn.unbox(variables)
    want = nn.unbox(abstract_variables(model))
    mismatch = jax.tree.structure(variables) != jax.tree.structure(want)
    if not mismatch:
        pairs = zip(jax.tree.leaves(variables), jax.tree.leaves(want), strict=True)
        mismatch = any(np.shape(a) != b.shape for a, b in pairs)
    if mismatch:
        raise ValueError(
            "generation on a mesh: the variables do not match the model's parameters (another "
            f"size or registry?); model {model.width} wide, {model.encoder_depth}+"
            f"{model.decoder_depth} layers, modalities {list(model.registry.names)}"
        )
    return model, jax.device_put(variables, shardings)


def place_batch(tree, mesh: Mesh, rules):
    """Every array of `tree` (leading axis = batch) on `mesh`, split by `batch_sharding`.
    In a multi-process run every process passes the whole batch."""
    return jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, np.shape(x), rules)), tree)
