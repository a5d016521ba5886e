"""Cleanups cut short by SIGKILL: a step folder half deleted by Orbax (past `keep`) is removed
at start and never listed; a run killed while deleting a checkpoint or while exporting its
bundle resumes, keeps the previous bundle loadable with the same outputs, and ends bit for
bit like an uninterrupted run, with one metrics row per step. The kills land at those moments
every time through tests/kill_driver.py."""

import json
import shutil
import sys
import time

import jax
import numpy as np
import pytest

from mmjax.parallel import create_mesh
from tests.test_checkpoint import abstract_like, assert_bitwise_equal, make_ckpt, make_state
from tests.test_multiprocess import CONFIG, TIMEOUT, Launch, _checkpoint, _run

STEPS = 10
FLAGS = (  # checkpoints at 2, 4, 6, 8, 10; keeping 2, saving 6 deletes 2
    f"--config.total_steps={STEPS}",
    "--config.checkpoint.every=2",
    "--config.checkpoint.keep=2",
    f"--config.eval.every={STEPS}",
)


def _half_delete(step_dir):
    """What a deletion cut short leaves: the state, no iterator state, no commit files."""
    shutil.rmtree(step_dir / "data_iterator")
    for name in ("_CHECKPOINT_METADATA", "commit_success.txt"):
        (step_dir / name).unlink(missing_ok=True)


def test_half_deleted_steps_are_removed_at_start_and_reported(tmp_path, capsys):
    state = make_state(create_mesh({"data": 2, "fsdp": 2, "tensor": 1}, jax.devices()[:4]))
    with make_ckpt(tmp_path, state, keep=5) as ckpt:
        for step in (2, 4, 6):
            ckpt.save(step, jax.tree.map(lambda x, s=step: x + s, state), {"i": step})
    directory = tmp_path / "checkpoints"
    _half_delete(directory / "2")  # the oldest, as Orbax deletes past `keep`
    _half_delete(directory / "6")  # the latest
    (directory / "6" / "data_iterator").mkdir()  # an empty folder is no iterator state
    with make_ckpt(tmp_path, state, keep=5) as ckpt:
        assert ckpt.all_steps() == [4] and ckpt.latest_step() == 4
        restored, data_state = ckpt.restore(abstract_like(state))
    assert data_state == {"i": 4}
    assert_bitwise_equal(restored, jax.tree.map(lambda x: x + 4, state))
    lines = [x for x in capsys.readouterr().out.splitlines() if "incomplete" in x]
    assert lines == [
        f"checkpoints: removed incomplete step folder(s) [2, 6] of {directory} (a save or a "
        "deletion cut short); they cannot be restored"
    ]
    assert sorted(p.name for p in directory.iterdir()) == ["4", "model_metadata.json"]


# -- SIGKILL during the cleanups of a real run ----------------------------------------------------


def _killed(moment, workdir, logs) -> str:
    """Runs the tiny tokenizer training under tests/kill_driver.py MOMENT; its log, once the
    driver killed it there."""
    cmd = [
        sys.executable, "tests/kill_driver.py", moment, f"--config={CONFIG}:tokenizer",
        f"--workdir={workdir}", *FLAGS,
    ]  # fmt: skip
    launch = Launch("tokenizer", workdir, 1, logs, cmd=cmd)
    try:
        code = launch.procs[0].wait(timeout=TIMEOUT)
    finally:
        launch.kill()
    text = launch.logs[0].read_text()
    assert code == -9 and "kill_driver: SIGKILL" in text, text[-3000:]
    return text


def _rows(workdir) -> list[dict]:
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def _train_rows(workdir) -> list[tuple]:
    return [(r["step"], r["loss"]) for r in _rows(workdir) if "loss" in r]


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.mark.slow
def test_kills_during_checkpoint_deletion_and_export_resume_bit_for_bit(tmp_path):
    from mmjax.tokenizers import Tokenizer

    logs = tmp_path / "logs"
    logs.mkdir()
    ref, run = tmp_path / "reference", tmp_path / "killed"
    reference = Launch("tokenizer", ref, 1, logs, *FLAGS)
    try:
        # 1. Killed midway through Orbax deleting step 2 (while saving 6).
        text = _killed("delete", run, logs)
        assert "midway through deleting step 2" in text
        steps = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())
        assert steps == ["2", "4", "6"] and not (run / "checkpoints/2/data_iterator").exists()
        # ... and the latest step half deleted too, so that the resume goes back past rows
        # that metrics.jsonl already holds.
        _half_delete(run / "checkpoints" / "6")
        assert [s for s, _ in _train_rows(run)][:6] == [1, 2, 3, 4, 5, 6]

        # 2. Resumed: the two half-deleted steps are removed and reported, it goes on from 4.
        start = time.monotonic()
        ((text,),) = _run(Launch("tokenizer", run, 1, logs, *FLAGS))
        assert "removed incomplete step folder(s) [2, 6] of" in text
        assert "resumed from step 4" in text
        images = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
        exported = Tokenizer.load(run)
        tokens, variables = np.asarray(exported.encode(images)), _host(exported.variables)

        # 3. The finished run again (it evaluates and exports once more), killed during the
        #    export: once the new weights are written, and before the new metadata replaces
        #    the old. The previous bundle loads and gives the same tokens each time.
        for moment in ("export_weights", "export_meta"):
            _killed(moment, run, logs)
            again = Tokenizer.load(run)
            assert again.meta["weights"] == exported.meta["weights"], moment
            np.testing.assert_array_equal(np.asarray(again.encode(images)), tokens)
            assert_bitwise_equal(_host(again.variables), variables)
        _run(Launch("tokenizer", run, 1, logs, *FLAGS))
        assert time.monotonic() - start < TIMEOUT
        _run(reference)
    finally:
        reference.kill()

    # One row per train step, with the uninterrupted run's losses; the same final train
    # state and exported bundle, bit for bit.
    assert [s for s, _ in _train_rows(run)] == list(range(1, STEPS + 1))
    assert _train_rows(run) == _train_rows(ref)
    assert_bitwise_equal(_checkpoint(run, STEPS), _checkpoint(ref, STEPS))
    final, expected = Tokenizer.load(run), Tokenizer.load(ref)
    assert_bitwise_equal(_host(final.variables), _host(expected.variables))
    assert final.meta["checksums"] == expected.meta["checksums"]
    assert sorted(p.name for p in (run / "tokenizer").iterdir()) == [
        "tokenizer.json",
        final.meta["weights"],
    ]
