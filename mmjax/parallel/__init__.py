"""Device meshes, logical axis rules, state shardings, multi-process set-up."""

from mmjax.parallel.distributed import barrier, is_primary, maybe_initialize, to_host
from mmjax.parallel.mesh import MESH_AXES, create_mesh, mesh_shape
from mmjax.parallel.rules import DEFAULT_RULES, logical_to_spec, rules_from_config, state_shardings

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "barrier",
    "create_mesh",
    "is_primary",
    "logical_to_spec",
    "maybe_initialize",
    "mesh_shape",
    "rules_from_config",
    "state_shardings",
    "to_host",
]
