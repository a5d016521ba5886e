"""Multi-process training for real on one machine: `python -m mmjax.train` in 2 processes x 4
CPU devices, joined by `jax.distributed` (gloo collectives) through the MMJAX_* environment
that the launch scripts set, against 1 process x 8 devices with the same config
(tests/multiprocess_config.py). Same losses, metrics written once, the same checkpoints and
exported weights, and resume with the same or with a different number of processes."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mmjax.parallel import distributed

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "tests/multiprocess_config.py"
TIMEOUT = 420  # seconds for one launch (all of its processes)


# -- the environment contract, without starting anything ---------------------------------------


def test_settings_from_the_environment():
    settings = distributed.distributed_settings
    assert settings({}) is None
    assert settings({"MMJAX_DISTRIBUTED": "0"}) is None
    assert settings({"MMJAX_DISTRIBUTED": "1"}) == {}
    env = {"MMJAX_COORDINATOR": "10.0.0.2:1234", "MMJAX_NUM_PROCESSES": "4"}
    assert settings({**env, "MMJAX_PROCESS_ID": "3"}) == {
        "coordinator_address": "10.0.0.2:1234",
        "num_processes": 4,
        "process_id": 3,
    }
    with pytest.raises(ValueError, match="MMJAX_PROCESS_ID missing"):
        settings(env)
    with pytest.raises(ValueError, match=r"MMJAX_PROCESS_ID=4: expected an integer in 0 \.\. 3"):
        settings({**env, "MMJAX_PROCESS_ID": "4"})
    with pytest.raises(ValueError, match="MMJAX_NUM_PROCESSES='two'"):
        settings({**env, "MMJAX_NUM_PROCESSES": "two", "MMJAX_PROCESS_ID": "0"})
    with pytest.raises(ValueError, match="MMJAX_COORDINATOR='10.0.0.2': expected host:port"):
        settings({**env, "MMJAX_COORDINATOR": "10.0.0.2", "MMJAX_PROCESS_ID": "0"})
    with pytest.raises(ValueError, match="MMJAX_DISTRIBUTED='auto'"):
        settings({"MMJAX_DISTRIBUTED": "auto"})
    # Nothing set: a single-process run, and nothing is called.
    assert distributed.maybe_initialize({}) is False
    assert not jax.distributed.is_initialized()


# -- real runs ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launch:
    """`python -m mmjax.train` in `processes` processes x `8 // processes` CPU devices."""

    def __init__(self, kind, workdir: Path, processes: int, logs: Path, *flags):
        self.workdir, self.procs, self.logs = workdir, [], []
        port = _free_port()
        cmd = [
            sys.executable,
            "-m",
            "mmjax.train",
            f"--config={CONFIG}:{kind}",
            f"--workdir={workdir}",
            *flags,
        ]
        for i in range(processes):
            env = {k: v for k, v in os.environ.items() if not k.startswith("MMJAX_")}
            env.update(
                XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}",
                JAX_PLATFORMS="cpu",
                # Runs of the same topology reuse each other's compiled steps.
                JAX_COMPILATION_CACHE_DIR=str(logs / "jax_cache"),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            )
            if processes > 1:
                env.update(
                    MMJAX_COORDINATOR=f"127.0.0.1:{port}",
                    MMJAX_NUM_PROCESSES=str(processes),
                    MMJAX_PROCESS_ID=str(i),
                )
            log = logs / f"{workdir.name}.{len(list(logs.glob(workdir.name + '.*')))}.log"
            self.logs.append(log)
            with open(log, "w") as out:
                self.procs.append(
                    subprocess.Popen(
                        cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
                    )
                )

    def wait(self):
        deadline = time.monotonic() + TIMEOUT
        try:
            for p in self.procs:
                p.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pass
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        codes = [p.returncode for p in self.procs]
        if any(codes):
            tails = "\n".join(
                f"--- {log.name} (exit {c}) ---\n" + "\n".join(log.read_text().splitlines()[-40:])
                for log, c in zip(self.logs, codes, strict=True)
            )
            pytest.fail(f"training in {self.workdir} failed, exit codes {codes}:\n{tails}")
        return [log.read_text() for log in self.logs]


def _run(*launches):
    """Starts the launches together (they overlap their start-up), waits for all."""
    return [launch.wait() for launch in launches]


def _rows(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def _train_steps(workdir):
    return [r["step"] for r in _rows(workdir) if "loss" in r]


def _losses(workdir):
    return np.array([r["loss"] for r in _rows(workdir) if "loss" in r])


def _checkpoint(workdir, step):
    """The train state of checkpoint `step` as numpy arrays."""
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step) / "state"
    with ocp.PyTreeCheckpointer() as ckpt:
        tree = ckpt.metadata(path).item_metadata.tree
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return ckpt.restore(path, restore_args=args)


def _close(a, b, what, rtol=1e-4, atol=1e-6):
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b), what
    for (path, x), y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_allclose(
            x, y, rtol=rtol, atol=atol, err_msg=f"{what}{jax.tree_util.keystr(path)}"
        )


def _check_multiprocess_logs(logs):
    for i, text in enumerate(logs):
        assert f"jax.distributed: process {i} of 2, 4 local of 8 devices" in text, text[-2000:]


def test_tokenizer_two_processes_equal_one_and_resume_across_process_counts(tmp_path):
    from mmjax.tokenizers import Tokenizer

    logs = tmp_path / "logs"
    logs.mkdir()
    a, b, c = tmp_path / "one", tmp_path / "two", tmp_path / "two_then_one"
    # one: 1 process x 8 devices straight to step 4. two: 2 processes x 4 devices to step 2
    # (checkpoint), then resumed by 2 processes to step 4; two_then_one: the step-2
    # checkpoint of `two` resumed by 1 process x 8 devices.
    (_, two_logs) = _run(
        Launch("tokenizer", a, 1, logs), Launch("tokenizer", b, 2, logs, "--config.total_steps=2")
    )
    _check_multiprocess_logs(two_logs)
    assert _train_steps(b) == [1, 2]  # one line per log step: process 0 writes, alone
    bundle_at_2 = Tokenizer.load(str(b)).variables
    shutil.copytree(b, c)
    (resumed_logs, _) = _run(Launch("tokenizer", b, 2, logs), Launch("tokenizer", c, 1, logs))
    _check_multiprocess_logs(resumed_logs)
    assert all("resumed from step 2" in text for text in resumed_logs)

    reference = _losses(a)
    assert _train_steps(a) == [1, 2, 3, 4]
    for run in (b, c):
        assert _train_steps(run) == [1, 2, 3, 4]
        assert [r["step"] for r in _rows(run) if "eval/psnr" in r] == [2, 4]
        np.testing.assert_allclose(_losses(run), reference, rtol=1e-5)
    evals = [[r for r in _rows(run) if "eval/psnr" in r][-1] for run in (a, b, c)]
    for e in evals[1:]:
        np.testing.assert_allclose(e["eval/psnr"], evals[0]["eval/psnr"], rtol=1e-5)
    # Process 0 alone writes the event file (one per run) and the PNG grids.
    assert len(list(b.glob("events.out.tfevents.*"))) == 2
    assert sorted(p.name for p in (b / "eval").iterdir()) == ["0000002.png", "0000004.png"]
    # The checkpoints are sharded across both processes (mesh fsdp=8) and hold the same state.
    assert (b / "checkpoints" / "4" / "state" / "ocdbt.process_1").is_dir()
    _close(_checkpoint(b, 2), _checkpoint(a, 2), "checkpoint 2")
    for run in (b, c):
        _close(_checkpoint(run, 4), _checkpoint(a, 4), f"checkpoint 4 of {run.name}")
    # The exported bundles: gathered from both processes, the same weights.
    _close(bundle_at_2["params"], _checkpoint(a, 2)["params"], "bundle at step 2")
    final = Tokenizer.load(str(a)).variables
    for run in (b, c):
        _close(Tokenizer.load(str(run)).variables, final, f"bundle of {run.name}")
