"""Multi-process runs: `jax.distributed` set-up from the launch environment, and the few
helpers that keep every process in step when only one of them writes files.

The environment contract (see launch/README.md):

    MMJAX_COORDINATOR=host:port, MMJAX_NUM_PROCESSES=N, MMJAX_PROCESS_ID=i
        -> jax.distributed.initialize(host:port, N, i)   (launch/gpu.sh; any cluster)
    MMJAX_DISTRIBUTED=1
        -> jax.distributed.initialize()                  (Cloud TPU finds the workers)
    none of them
        -> a single-process run; nothing is called

(the three explicit variables win over MMJAX_DISTRIBUTED). On CPU the processes' collectives
go through gloo.

Every process runs the same program. Files that exist once per run (metrics, PNG grids) are
written by process 0 (`is_primary()`), but every process takes part in the computations that
produce them (`to_host` of sharded parameters is a collective). Checkpoints and exported
bundles are Orbax checkpoints to which every process writes its own shards.
"""

import logging
import os
from collections.abc import Mapping

import jax
import numpy as np

COORDINATOR, NUM_PROCESSES, PROCESS_ID = (
    "MMJAX_COORDINATOR",
    "MMJAX_NUM_PROCESSES",
    "MMJAX_PROCESS_ID",
)
DISTRIBUTED = "MMJAX_DISTRIBUTED"


def _int(env: Mapping[str, str], name: str) -> int:
    value = env[name].strip()
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected an integer") from None


def distributed_settings(env: Mapping[str, str] | None = None) -> dict | None:
    """The `jax.distributed.initialize` keyword arguments the environment asks for: {} for
    Cloud TPU auto-detection, None for a single-process run. Raises ValueError naming the
    variable when the settings are partial or invalid."""
    env = os.environ if env is None else env
    names = (COORDINATOR, NUM_PROCESSES, PROCESS_ID)
    given = [n for n in names if env.get(n, "").strip()]
    if given:
        missing = [n for n in names if n not in given]
        if missing:
            raise ValueError(
                f"a multi-process run needs {', '.join(names)}; {', '.join(given)} set but "
                f"{', '.join(missing)} missing"
            )
        coordinator = env[COORDINATOR].strip()
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"{COORDINATOR}={coordinator!r}: expected host:port of process 0, "
                "e.g. 10.0.0.2:1234"
            )
        num_processes = _int(env, NUM_PROCESSES)
        if num_processes < 1:
            raise ValueError(f"{NUM_PROCESSES}={num_processes}: expected a positive integer")
        process_id = _int(env, PROCESS_ID)
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"{PROCESS_ID}={process_id}: expected an integer in 0 .. {num_processes - 1}"
            )
        return {
            "coordinator_address": coordinator,
            "num_processes": num_processes,
            "process_id": process_id,
        }
    flag = env.get(DISTRIBUTED, "").strip().lower()
    if flag in ("", "0", "false", "no"):
        return None
    if flag in ("1", "true", "yes"):
        return {}
    raise ValueError(f"{DISTRIBUTED}={env[DISTRIBUTED]!r}: expected 1 (or 0, or unset)")


def maybe_initialize(env: Mapping[str, str] | None = None) -> bool:
    """Calls `jax.distributed.initialize` when the environment asks for a multi-process run
    (see the module docstring); returns whether this is one. Must run before anything
    touches JAX devices. Calling it again after a successful set-up does nothing."""
    settings = distributed_settings(env)
    if settings is None:
        return False
    if jax.distributed.is_initialized():
        return True
    if settings and jax.config.jax_cpu_collectives_implementation != "mpi":
        # Cross-process collectives of the CPU backend (tests, CPU clusters); GPUs and TPUs
        # bring their own, for which this setting is ignored.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**settings)
    logging.info(
        "jax.distributed: process %d of %d, %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def is_primary() -> bool:
    """Whether this process writes the run's single-copy files (process 0)."""
    return jax.process_index() == 0


def to_host(tree):
    """A numpy copy of a pytree of arrays, whole on every process, including arrays sharded
    over devices of other processes (which `jax.device_get` refuses). A collective when any
    array is sharded across processes: every process must call it, in the same order.
    Gathers one array at a time, so no device ever holds more than one whole parameter."""
    from jax.experimental import multihost_utils

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return multihost_utils.process_allgather(x, tiled=True)
        return jax.device_get(x)

    return jax.tree.map(fetch, tree)


def barrier(name: str):
    """Waits until every process reaches the barrier `name` (no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
