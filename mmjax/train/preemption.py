"""Stopping a run cleanly on SIGTERM, the notice that a TPU VM or GKE sends before it
preempts a host: every process saves a checkpoint at the same step boundary and the run ends
with `Preempted`; re-running the same command resumes from that checkpoint.

Multi-process runs use JAX's preemption sync point: `jax.distributed.initialize` installs a
SIGTERM notifier, and a notice on any process makes all of them agree, through the
coordination service, on the first step that none has passed yet. Checking it each step is a
local call (no collective), so steps stay asynchronous. A single process needs no agreement:
a Python signal handler sets a flag that the loop reads at the next step boundary.
"""

import signal
import threading

import jax


class Preempted(Exception):
    """A run stopped on a preemption notice after saving the checkpoint of `step`."""

    def __init__(self, step: int, workdir):
        self.step, self.workdir = step, workdir
        super().__init__(
            f"preempted: saved the checkpoint of step {step} in {workdir}; re-run the same "
            "command to resume from it"
        )


def _sync_manager():
    """JAX's preemption sync manager, or None (single process, or the service disabled)."""
    from jax._src import distributed

    state = distributed.global_state
    return state.preemption_sync_manager if state.client is not None else None


class PreemptionWatch:
    """A context manager over one training run; `reached(n)` says, after the run's n-th step
    (n = 1, 2, ...), whether to save and stop there. Every process calls it after each step.

    Multi-process: JAX's preemption sync point, which stops every process one past the
    largest n any process had reported when the notice came. It counts the steps of this run
    rather than training steps: it starts from 0, so a notice that comes before the first
    step (e.g. during the compile) stops all processes after it, also in a resumed run.
    Single process: a SIGTERM handler, installed on entry (main thread only) and the previous
    one put back on exit; SIGINT (Ctrl-C) is left alone.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._installed = False
        self._multi = self._sync = False

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        # Several processes without the preemption service (jax_enable_preemption_service
        # off) cannot agree on a step: SIGTERM then keeps its default action.
        self._multi = jax.process_count() > 1
        self._sync = self._multi and _sync_manager() is not None
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def reached(self, n: int) -> bool:
        """Whether every process saves and stops after the run's `n`-th step."""
        if self._multi:
            from jax.experimental import multihost_utils

            return self._sync and multihost_utils.reached_preemption_sync_point(n)
        return self.requested
