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
TIMEOUT = 480  # seconds for the launches started together


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
    with pytest.raises(ValueError, match=r"MMJAX_COORDINATOR='10\.0\.0\.2': expected host:port"):
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
    """`python -m mmjax.train` in `processes` processes x `8 // processes` CPU devices (or
    another command `cmd`, run the same way; `workdir` then names its logs)."""

    def __init__(self, kind, workdir: Path, processes: int, logs: Path, *flags, cmd=None):
        self.workdir, self.procs, self.logs = workdir, [], []
        port = _free_port()
        cmd = cmd or [
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
                JAX_PLATFORMS="cpu",
                # Tiny steps: compiling them without XLA's expensive CPU passes halves the
                # test's time (every run here uses the same flags).
                XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes} "
                "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
                # A single-process run reuses the compiled steps of an earlier one (in a
                # multi-process run only process 0 writes the cache, under its own keys).
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
                    subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
                )

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def wait(self, deadline: float) -> list[str]:
        """The processes' logs once all exited with 0; fails the test, with the end of
        every process's log, when one did not or when `deadline` passes."""
        try:
            for p in self.procs:
                p.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        codes = [p.returncode for p in self.procs]
        if any(codes):
            tails = "\n".join(
                f"--- {log.name} (exit {c}) ---\n" + "\n".join(log.read_text().splitlines()[-60:])
                for log, c in zip(self.logs, codes, strict=True)
            )
            pytest.fail(f"training in {self.workdir} failed, exit codes {codes}:\n{tails}")
        return [log.read_text() for log in self.logs]


def _run(*launches):
    """Waits for launches started together (they share the cores); their logs."""
    deadline = time.monotonic() + TIMEOUT
    try:
        return [launch.wait(deadline) for launch in launches]
    finally:
        for launch in launches:
            launch.kill()


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


def _close(a, b, what, rtol=1e-4, atol=1e-4):
    """Equal to float rounding, leaf by leaf. atol: the attention key biases get no gradient
    (softmax ignores a shift shared by all keys), so Adam turns rounding noise into small
    steps there: they differed by up to 4e-5 after 4 steps, every other weight by < 2e-6."""
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    for (path, x), y in zip(flat_a, jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(
            x, y, rtol=rtol, atol=atol, err_msg=f"{what}{jax.tree_util.keystr(path)}"
        )


def _check_multiprocess_logs(logs):
    for i, text in enumerate(logs):
        assert f"jax.distributed: process {i} of 2, 4 local of 8 devices" in text, text[-2000:]


@pytest.fixture(scope="module")
def tokenizer_runs(tmp_path_factory):
    """one: 1 process x 8 devices, 4 steps (checkpoints at 2 and 4); two: 2 processes x 4
    devices, stopped after step 2 (a run with --config.total_steps=2; the learning rate is
    constant, so it is the first half of a run to 4)."""
    root = tmp_path_factory.mktemp("tokenizer_runs")
    logs = root / "logs"
    logs.mkdir()
    one, two = root / "one", root / "two"
    _, two_logs = _run(
        Launch("tokenizer", one, 1, logs),
        Launch("tokenizer", two, 2, logs, "--config.total_steps=2"),
    )
    _check_multiprocess_logs(two_logs)
    return root, one, two


def test_two_processes_train_like_one(tokenizer_runs):
    from mmjax.tokenizers import Tokenizer

    _, one, two = tokenizer_runs
    assert _train_steps(one) == [1, 2, 3, 4]
    assert _train_steps(two) == [1, 2]  # one line per log step: process 0 writes, alone
    np.testing.assert_allclose(_losses(two), _losses(one)[:2], rtol=1e-5)
    # Process 0 alone writes the event file and the PNG grid.
    assert len(list(two.glob("events.out.tfevents.*"))) == 1
    assert [p.name for p in (two / "eval").iterdir()] == ["0000002.png"]
    # The checkpoint is sharded across both processes (mesh fsdp=8) and holds the state of
    # the one-process run.
    assert (two / "checkpoints" / "2" / "state" / "ocdbt.process_1").is_dir()
    reference = _checkpoint(one, 2)
    _close(_checkpoint(two, 2), reference, "checkpoint 2")
    # The exported bundle, written by both processes (each its own shards): the same weights.
    assert (two / "tokenizer" / "weights-0" / "ocdbt.process_1").is_dir()
    _close(Tokenizer.load(str(two)).variables["params"], reference["params"], "bundle")


def test_bundles_saved_by_two_processes_load_in_one_and_back(tokenizer_runs):
    """The 2-process bundle restored here onto 8 devices; the 1-process bundle restored by a
    2-process job onto a mesh over both processes' devices: the same weights and outputs."""
    from mmjax.parallel import create_mesh
    from mmjax.tokenizers import Tokenizer

    root, one, two = tokenizer_runs
    mesh = create_mesh({"fsdp": -1})
    sharded, single = Tokenizer.load(str(two), mesh=mesh), Tokenizer.load(str(two))
    kernel = sharded.variables["params"]["encoder"]["patch_embed"]["kernel"]
    assert kernel.sharding.spec[-1] == "fsdp", kernel.sharding  # [.., embed] over 8 devices
    _close(jax.device_get(sharded.variables), jax.device_get(single.variables), "2 -> 1")
    out = root / "loaded_by_two.npz"
    cmd = [sys.executable, "-m", "tests.multiprocess_bundle", str(one), str(out)]
    (logs,) = _run(Launch(None, root / "load_bundle", 2, root / "logs", cmd=cmd))
    assert all(f"process {i}: loaded" in text for i, text in enumerate(logs))
    got, tok = np.load(out), Tokenizer.load(str(one))
    images = np.random.default_rng(0).random((8, 32, 32, 3), np.float32)
    tokens = np.asarray(tok.encode(images))
    np.testing.assert_array_equal(got["tokens"], tokens)
    np.testing.assert_allclose(got["decoded"], tok.decode(tokens), rtol=1e-5, atol=1e-5)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tok.variables):
        np.testing.assert_array_equal(got[jax.tree_util.keystr(path)], leaf, err_msg=str(path))


@pytest.mark.slow
def test_resume_with_the_same_and_with_another_process_count(tokenizer_runs):
    from mmjax.tokenizers import Tokenizer

    root, one, two = tokenizer_runs
    logs = root / "logs"
    # The step-2 checkpoint of `two`, resumed to step 4 by 2 processes (two_again) and by
    # 1 process x 8 devices (two_then_one).
    two_again, two_then_one = root / "two_again", root / "two_then_one"
    shutil.copytree(two, two_again)
    shutil.copytree(two, two_then_one)
    resumed_logs, _ = _run(
        Launch("tokenizer", two_again, 2, logs), Launch("tokenizer", two_then_one, 1, logs)
    )
    _check_multiprocess_logs(resumed_logs)
    assert all("resumed from step 2" in text for text in resumed_logs)
    final = Tokenizer.load(str(one)).variables
    eval_one = [r for r in _rows(one) if "eval/psnr" in r]
    for run in (two_again, two_then_one):
        assert _train_steps(run) == [1, 2, 3, 4]
        np.testing.assert_allclose(_losses(run), _losses(one), rtol=1e-5)
        evals = [r for r in _rows(run) if "eval/psnr" in r]
        assert [r["step"] for r in evals] == [2, 4]
        np.testing.assert_allclose(evals[-1]["eval/psnr"], eval_one[-1]["eval/psnr"], rtol=1e-5)
        _close(_checkpoint(run, 4), _checkpoint(one, 4), f"checkpoint 4 of {run.name}")
        _close(Tokenizer.load(str(run)).variables, final, f"bundle of {run.name}")
    assert len(list(two_again.glob("events.out.tfevents.*"))) == 2  # one per run


# -- 4M ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fourm_data(tmp_path_factory, untrained_tokenizers):
    """Pre-tokenized train (64 scenes) and validation (16 scenes) outputs, from an untrained
    32 px rgb tokenizer (4 x 4 tokens) and the scenes' captions."""
    from mmjax.data import ScenesSource
    from mmjax.data.text_vocab import scenes_text_tokenizer
    from mmjax.pretokenize import pretokenize

    root = tmp_path_factory.mktemp("fourm_data")
    model_config = dict(
        type="vit", size="tiny", patch_size=8, width=32, depth=1, heads=2, mlp_dim=64, z_dim=8
    )
    dirs = untrained_tokenizers(("rgb",), model_config, {"type": "fsq", "levels": [4, 4, 4]}, 32)
    text = scenes_text_tokenizer(300, 600)
    out = {}
    for split, n in (("train", 64), ("validation", 16)):
        out[split] = root / split
        pretokenize(
            ScenesSource(split, 32, n), dirs, str(out[split]),
            text_tokenizer=text, resolution=32, batch_size=32,
            info={"source": "scenes", "split": split},
        )  # fmt: skip
    return out


@pytest.mark.slow
def test_fourm_two_processes_train_like_one(fourm_data, tmp_path):
    from mmjax.fourm.bundle import load_fourm

    logs = tmp_path / "logs"
    logs.mkdir()
    one, two = tmp_path / "one", tmp_path / "two"
    data = (f"--config.data.path={fourm_data['train']}",)
    data += (f"--config.data.val_path={fourm_data['validation']}",)
    _, two_logs = _run(Launch("fourm", one, 1, logs, *data), Launch("fourm", two, 2, logs, *data))
    _check_multiprocess_logs(two_logs)
    # The same examples, masked the same way (the masking's random stream follows the
    # example's global position, whatever the number of hosts), the same losses.
    assert _train_steps(one) == _train_steps(two) == [1, 2, 3, 4]
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-5)
    eval_one, eval_two = ([r for r in _rows(w) if "eval/loss" in r] for w in (one, two))
    assert len(eval_one) == len(eval_two) == 1
    for k, v in eval_one[0].items():
        if k.startswith("eval/"):
            np.testing.assert_allclose(eval_two[0][k], v, rtol=1e-5, err_msg=k)
    _close(_checkpoint(two, 4), _checkpoint(one, 4), "checkpoint 4")
    _close(load_fourm(str(two))[1], load_fourm(str(one))[1], "bundle")
