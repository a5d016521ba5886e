"""Host batch -> global jax.Array on the mesh, batch sharded over the data axes."""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.parallel.mesh import DATA_AXES


def global_batch(host_batch: dict, mesh: jax.sharding.Mesh, data_axes=DATA_AXES) -> dict:
    """Each process passes its own slice of the batch; numeric arrays become global arrays
    whose leading (batch) axis is split over `data_axes`. Strings stay host-local numpy."""
    axes = tuple(a for a in data_axes if a in mesh.axis_names)
    sharding = NamedSharding(mesh, P(axes))
    out = {}
    for key, value in host_batch.items():
        a = np.asarray(value)
        if a.dtype.kind in "USO":
            out[key] = a
            continue
        out[key] = jax.make_array_from_process_local_data(sharding, a)
    return out
