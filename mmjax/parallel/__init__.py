"""Device meshes, logical axis rules and state shardings."""

from mmjax.parallel.mesh import MESH_AXES, create_mesh, mesh_shape
from mmjax.parallel.rules import DEFAULT_RULES, logical_to_spec, rules_from_config, state_shardings

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "create_mesh",
    "logical_to_spec",
    "mesh_shape",
    "rules_from_config",
    "state_shardings",
]
