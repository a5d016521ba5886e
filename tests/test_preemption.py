"""Preemption: SIGTERM to `python -m mmjax.train` (what a TPU VM or GKE sends first) saves a
checkpoint at the next step boundary in every process and exits 0; re-running the same command
resumes, and the finished run equals an uninterrupted one bit for bit. Each run is stopped
twice: during start-up and compile (before step 1), and at a random step of its resumed run.
Single process and 2 processes x 4 CPU devices (gloo), launched as tests/test_multiprocess.py
launches them."""

import json
import os
import random
import re
import signal
import time

import jax
import numpy as np
import pytest

from mmjax.train.preemption import PreemptionWatch
from tests.test_multiprocess import TIMEOUT, Launch, _checkpoint, _run

STEPS, EVERY = 30, 8  # periodic checkpoints at 8, 16, 24 and the final 30
FLAGS = (
    f"--config.total_steps={STEPS}",
    f"--config.checkpoint.every={EVERY}",
    f"--config.eval.every={STEPS}",
    "--config.checkpoint.async_save=True",  # as by default: a save may be running at SIGTERM
)
SAVED = re.compile(r"preempted: saved the checkpoint of step (\d+) in ")


def test_watch_flags_sigterm_and_puts_the_previous_handler_back():
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda *a: calls.append(a))
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with PreemptionWatch() as watch:
            assert not watch.reached(1)
            assert signal.getsignal(signal.SIGINT) is sigint  # Ctrl-C keeps its behaviour
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler runs between bytecodes of the main thread
            assert watch.reached(2) and watch.reached(3)
        assert calls == []
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert len(calls) == 1  # the handler from before the run is back
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train_steps(workdir) -> list[int]:
    """The steps of metrics.jsonl, read while a run may still be writing it."""
    try:
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a line still being written
            continue
        if "loss" in row:
            steps.append(row["step"])
    return steps


def _losses(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _sigterm(launch: Launch, when, to) -> int:
    """Sends SIGTERM to processes `to` once `when()` holds, waits for every process to exit 0
    (else fails with their logs); the step each says it saved, which must be one."""
    deadline = time.monotonic() + TIMEOUT
    while not when():
        exited = [p.returncode for p in launch.procs if p.poll() is not None]
        if exited or time.monotonic() > deadline:
            launch.wait(time.monotonic())  # fails with the logs when one failed
            pytest.fail(f"the run in {launch.workdir} ended before the SIGTERM: {exited}")
        time.sleep(0.02)
    for i in to:
        launch.procs[i].send_signal(signal.SIGTERM)
    logs = _run(launch)[0]
    steps = {int(m) for text in logs for m in SAVED.findall(text)}
    assert len(steps) == 1 and all(SAVED.search(t) for t in logs), [t[-1500:] for t in logs]
    return steps.pop()


def _check_saved(workdir, step, earlier=()):
    """The preempted run trained up to `step`, saved it, and stopped there; the other
    checkpoints are periodic ones or those of `earlier` preemptions."""
    assert _train_steps(workdir)[-1] == step < STEPS
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == step, steps
    assert all(s % EVERY == 0 or s in earlier for s in steps[:-1]), steps
    assert not list((workdir / "checkpoints").glob("*tmp*"))  # nothing half-written
    assert not (workdir / "tokenizer").exists()  # no export of an unfinished run


def _preempt_twice_and_finish(tmp_path, processes: int):
    from mmjax.tokenizers import Tokenizer

    logs = tmp_path / "logs"
    logs.mkdir()
    ref, run = tmp_path / "reference", tmp_path / "preempted"
    reference = Launch("tokenizer", ref, processes, logs, *FLAGS)
    try:
        # 1. During start-up: every process is past jax.distributed set-up and process 0
        #    announces the run; the step (and its initialization) still have to compile.
        first = Launch("tokenizer", run, processes, logs, *FLAGS)

        def started():
            texts = [log.read_text() for log in first.logs]
            ready = processes == 1 or all(
                f"jax.distributed: process {i} of" in t for i, t in enumerate(texts)
            )
            return ready and "starting from scratch" in texts[0]

        step1 = _sigterm(first, started, to=range(processes))
        if processes == 1:
            assert step1 == 1  # the flag is up before the first step ends
        _check_saved(run, step1)

        # 2. Resumed, then SIGTERM after a random step (only to the last process when there
        #    are several: the others learn of it through the coordination service).
        after = random.randint(step1 + 2, max(step1 + 2, STEPS // 3))
        second = Launch("tokenizer", run, processes, logs, *FLAGS)
        step2 = _sigterm(second, lambda: max(_train_steps(run)) >= after, to=[processes - 1])
        assert step2 >= after, (after, step2)
        assert f"resumed from step {step1}" in second.logs[0].read_text()
        _check_saved(run, step2, [step1])

        # 3. Resumed to the end.
        (final_logs,) = _run(Launch("tokenizer", run, processes, logs, *FLAGS))
        assert all(f"resumed from step {step2}" in text for text in final_logs)
        _run(reference)
    finally:
        reference.kill()

    # Bit for bit: every step's loss, the whole final train state (params, optimizer state,
    # step, statistics) and the exported bundle.
    assert _train_steps(run) == list(range(1, STEPS + 1)) == _train_steps(ref)
    assert _losses(run) == _losses(ref)
    state, expected = _checkpoint(run, STEPS), _checkpoint(ref, STEPS)
    assert jax.tree.structure(state) == jax.tree.structure(expected)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=f"checkpoint {jax.tree_util.keystr(path)}")
    bundle = jax.device_get(Tokenizer.load(str(run)).variables)
    ref_bundle = jax.device_get(Tokenizer.load(str(ref)).variables)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(bundle), jax.tree.leaves(ref_bundle), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=f"bundle {jax.tree_util.keystr(path)}")


@pytest.mark.slow  # a minute of training or compiling: CI's slow step
def test_sigterm_saves_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    _preempt_twice_and_finish(tmp_path, processes=1)


@pytest.mark.slow
def test_sigterm_in_two_processes(tmp_path):
    _preempt_twice_and_finish(tmp_path, processes=2)
