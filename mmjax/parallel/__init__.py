"""The sharding vocabulary, defined once: the device mesh and its data axes, logical axis
rules, activation constraints, host batch -> global array, multi-process set-up."""

from mmjax.parallel.constrain import LOGITS_AXES, RESIDUAL_AXES, constrain
from mmjax.parallel.distributed import barrier, is_primary, maybe_initialize, to_host
from mmjax.parallel.global_batch import global_batch
from mmjax.parallel.mesh import DATA_AXES, MESH_AXES, create_mesh, mesh_shape
from mmjax.parallel.rules import (
    DEFAULT_RULES,
    batch_sharding,
    logical_to_spec,
    rules_from_config,
    state_shardings,
)

__all__ = [
    "DATA_AXES",
    "DEFAULT_RULES",
    "LOGITS_AXES",
    "MESH_AXES",
    "RESIDUAL_AXES",
    "barrier",
    "batch_sharding",
    "constrain",
    "create_mesh",
    "global_batch",
    "is_primary",
    "logical_to_spec",
    "maybe_initialize",
    "mesh_shape",
    "rules_from_config",
    "state_shardings",
    "to_host",
]
