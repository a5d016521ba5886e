"""Device meshes (and, in later issues, logical axis rules and state shardings)."""

from mmjax.parallel.mesh import MESH_AXES, create_mesh, mesh_shape

__all__ = ["MESH_AXES", "create_mesh", "mesh_shape"]
