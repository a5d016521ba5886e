"""gs:// paths against a real GCS API server on localhost (the `gcs_server` fixture): the path
layer beside the same calls on a local directory, the metrics writer with resume, ArrayRecord
shards, eval grids, Orbax training checkpoints; clear errors for no GCS client, an unreachable
endpoint, a missing bucket and a refused request; end to end (slow): a tokenizer run killed
and resumed on gs://, its bundle loaded from gs://, pre-tokenization to gs:// and a 4M run
reading it. Nothing may land on local disk under a `gs:` folder."""

import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest

from mmjax.storage import paths
from mmjax.storage.paths import StorageError
from tests.gcs_server import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "gs://test-bucket"


@pytest.fixture(autouse=True)
def no_local_gs_folder():
    """A gs:// path mistaken for a local one would show up as ./gs: (or /tmp/.../gs:)."""
    yield
    for where in (os.getcwd(), ROOT, tempfile.gettempdir()):
        assert not os.path.exists(os.path.join(where, "gs:")), f"{where}/gs: was written"


@pytest.fixture
def gs(gcs_server):
    """A fresh gs:// folder for one test."""
    return f"{BUCKET}/{uuid.uuid4().hex[:12]}"


def _run(code: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout,
    )  # fmt: skip


# -- the path layer -------------------------------------------------------------------------


def _exercise(root: str) -> dict:
    """The same calls on a local or a gs:// root; what they return must not depend on which."""
    j = paths.join
    paths.makedirs(j(root, "a"))
    paths.write_text(j(root, "a", "x.txt"), "héllo\n")
    paths.write_json(j(root, "a", "m.json"), {"k": [1, 2]}, indent=1)
    paths.write_bytes(j(root, "b", "c", "y.bin"), b"\x00\x01")  # parents appear as needed
    paths.write_text(j(root, "a", "x.txt"), "replaced")
    with paths.staged_file(j(root, "a", "s.dat")) as tmp, open(tmp, "wb") as f:
        f.write(b"staged")
    with pytest.raises(RuntimeError), paths.staged_file(j(root, "a", "never.dat")) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("writer failed")
    paths.copy(j(root, "a", "s.dat"), j(root, "b", "s2.dat"))
    with paths.open_append(j(root, "log.jsonl"), min_interval=0) as f:
        f.write("1\n")
    with paths.open_append(j(root, "log.jsonl"), min_interval=0) as f:
        f.write("2\n")
    rel = lambda ps: [p[len(root) + 1 :] for p in ps]
    out = {
        "text": paths.read_text(j(root, "a", "x.txt")),
        "json": paths.read_json(j(root, "a", "m.json")),
        "bytes": paths.read_bytes(j(root, "b", "c", "y.bin")),
        "staged": paths.read_bytes(j(root, "a", "s.dat")),
        "copied": paths.read_bytes(j(root, "b", "s2.dat")),
        "appended": paths.read_text(j(root, "log.jsonl")),
        "never": paths.exists(j(root, "a", "never.dat")),
        "exists": [paths.exists(j(root, n)) for n in ("a/x.txt", "a", "nope", "a/nope.txt")],
        "isdir": [paths.isdir(j(root, n)) for n in ("a", "b/c", "a/x.txt", "nope")],
        "listdir": paths.listdir(j(root, "a")),
        "glob": rel(paths.glob(j(root, "a", "*.json"))) + rel(paths.glob(j(root, "*", "s*"))),
        "files": paths.walk_files(root),
    }
    paths.remove(j(root, "a", "m.json"))
    paths.rmtree(j(root, "b"))
    paths.rmtree(j(root, "b"))  # already gone: no error
    out["after_remove"] = paths.walk_files(root)
    return out


def test_path_layer_on_gcs_matches_a_local_directory(gs, tmp_path):
    local = _exercise(str(tmp_path / "root"))
    remote = _exercise(gs)
    assert remote == local
    assert local["files"] == [
        "a/m.json",
        "a/s.dat",
        "a/x.txt",
        "b/c/y.bin",
        "b/s2.dat",
        "log.jsonl",
    ]
    assert local["appended"] == "1\n2\n" and local["never"] is False


def test_remote_append_rewrites_whole_flushes_only(gs):
    path = paths.join(gs, "rows.txt")
    f = paths.open_append(path, min_interval=3600)
    f.write("a\n")
    f.flush()  # the first flush writes (none before it)
    f.write("b\n")
    f.flush()  # within min_interval: kept in memory
    assert paths.read_text(path) == "a\n"
    f.flush(force=True)
    assert paths.read_text(path) == "a\nb\n"
    f.write("c\n")
    f.close()
    assert paths.read_text(path) == "a\nb\nc\n"
    with pytest.raises(ValueError, match="closed"):
        f.write("d\n")


def test_metrics_writer_on_gcs_resumes_and_writes_events(gs):
    from mmjax.train import MetricsWriter
    from tests.test_metrics_writer import read_events

    with MetricsWriter(gs, enabled=True) as w:
        w.write_scalars(1, {"loss": 0.5})
        w.write_scalars(2, {"loss": 0.25})
        w.write_images(2, {"grid": np.full((4, 5, 3), 0.5, np.float32)})
        first = w.event_path
    with MetricsWriter(gs, enabled=True, remote_flush_s=0) as w:  # a resumed run
        w.write_scalars(3, {"loss": 0.125})
        # flushed at once with remote_flush_s=0: readable while the run goes on
        rows = [
            json.loads(x) for x in paths.read_text(paths.join(gs, "metrics.jsonl")).splitlines()
        ]
        assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["loss"] for r in rows] == [0.5, 0.25, 0.125]
    events = read_events(paths.as_path(first))
    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in events for v in e.summary.value]
    assert scalars[:2] == [(1, "loss", 0.5), (2, "loss", 0.25)]
    assert scalars[2][:2] == (2, "grid")
    assert len(paths.glob(paths.join(gs, "events.out.tfevents.*"))) == 2


def test_metrics_writer_on_gcs_moves_to_a_new_event_file_past_the_part_size(gs, monkeypatch):
    from mmjax.train import MetricsWriter
    from tests.test_metrics_writer import read_events

    monkeypatch.setattr(MetricsWriter, "EVENTS_PART_BYTES", 200)
    with MetricsWriter(gs, enabled=True) as w:
        for step in range(6):
            w.write_scalars(step, {"loss": float(step), "padding_" * 8: 0.0})
    parts = paths.glob(paths.join(gs, "events.out.tfevents.*"))
    assert len(parts) >= 2
    steps = [e.step for p in parts for e in read_events(paths.as_path(p)) if e.summary.value]
    assert steps == list(range(6))  # in name order, every step once


def test_array_records_on_gcs_equal_local_ones(gs, tmp_path):
    from mmjax.data.records import ArrayRecordSource, write_records
    from mmjax.data.sources import build_source

    examples = [{"x": np.arange(i, i + 4, dtype=np.int32), "name": f"e{i}"} for i in range(7)]
    local = write_records(examples, str(tmp_path), "ex", num_shards=3)
    remote = write_records(examples, paths.join(gs, "recs"), "ex", num_shards=3)
    assert [os.path.basename(p) for p in remote] == [os.path.basename(p) for p in local]
    assert [paths.read_bytes(p) for p in remote] == [paths.read_bytes(p) for p in local]
    assert not paths.glob(paths.join(gs, "recs", "*.tmp"))
    with pytest.raises(FileExistsError, match="exists"):
        write_records(examples, paths.join(gs, "recs"), "ex", num_shards=3)
    source = build_source(
        {"source": "array_record", "paths": [paths.join(gs, "recs", "ex-*.array_record")]}
    )
    assert source.paths == remote
    ref = ArrayRecordSource(local)
    for i in range(len(ref)):
        a, b = source[i], ref[i]
        assert a["name"] == b["name"]
        np.testing.assert_array_equal(a["x"], b["x"])
    with pytest.raises(FileNotFoundError, match="nothing matches"):
        build_source({"source": "array_record", "paths": [paths.join(gs, "none-*")]})


def test_eval_grid_on_gcs_is_the_local_png(gs, tmp_path):
    from mmjax.eval import save_image_grid

    rows = [[np.full((4, 4, 3), v, np.float32) for v in (0.0, 0.5)]]
    local = save_image_grid(rows, str(tmp_path / "eval" / "g.png"), labels=["x"], scale=2)
    remote = save_image_grid(rows, paths.join(gs, "eval", "g.png"), labels=["x"], scale=2)
    assert remote == paths.join(gs, "eval", "g.png")
    assert paths.read_bytes(remote) == paths.read_bytes(local)


def test_orbax_training_checkpoints_on_gcs(gs, mesh):
    from tests.test_checkpoint import abstract_like, assert_bitwise_equal, make_ckpt, make_state

    state = make_state(mesh)
    with make_ckpt(gs, state) as ckpt:
        assert ckpt.save(5, state, {"next_index": 12})
    with make_ckpt(gs, state) as ckpt:  # a new process would see the same
        assert ckpt.latest_step() == 5
        restored, data_state = ckpt.restore(abstract_like(state))
    assert data_state == {"next_index": 12}
    assert_bitwise_equal(restored, state)
    assert paths.isdir(paths.join(gs, "checkpoints", "5", "state"))


# -- bad input --------------------------------------------------------------------------------


def test_missing_bucket_is_named(gcs_server):
    path = "gs://no-such-bucket/run/config.json"
    with pytest.raises(StorageError, match=r"gs://no-such-bucket/run/config.json: bucket 'no-"):
        paths.write_text(path, "{}")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        paths.read_text(path)
    assert not paths.exists(path)


def test_a_gcs_path_without_a_gcs_client_is_a_clear_error(gcs_server):
    out = _run(
        """
        import sys
        sys.modules["gcsfs"] = None  # as if not installed
        from mmjax.storage.paths import StorageError, write_text
        try:
            write_text("gs://test-bucket/x/config.json", "{}")
        except StorageError as e:
            print("ERROR", e)
        """,
        {},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ERROR cannot write gs://test-bucket/x/config.json: no client for gs:// paths" in (
        out.stdout
    )
    assert "pip install gcsfs" in out.stdout


class _Refuse(http.server.BaseHTTPRequestHandler):
    """A GCS endpoint that refuses every request, as a bucket without write access does."""

    def _refuse(self):
        body = json.dumps({"error": {"code": 403, "message": "caller does not have access"}})
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_PUT = do_DELETE = _refuse

    def log_message(self, *args):
        pass


def test_a_refused_request_is_a_permission_error_naming_the_path(gcs_server):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = _run(
            """
            from mmjax.storage.paths import StorageError, read_text, write_text
            for op in (lambda: write_text("gs://locked/run/a.txt", "x"),
                       lambda: read_text("gs://locked/run/a.txt")):
                try:
                    op()
                except StorageError as e:
                    print("ERROR", e)
            """,
            {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{server.server_address[1]}"},
        )
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [x for x in out.stdout.splitlines() if x.startswith("ERROR")]
    assert len(lines) == 2, out.stdout
    assert lines[0].startswith("ERROR cannot write gs://locked/run/a.txt: permission denied")
    assert lines[1].startswith("ERROR cannot read gs://locked/run/a.txt: permission denied")


@pytest.mark.slow
def test_an_unreachable_endpoint_is_named_and_does_not_hang(gcs_server):
    start = time.monotonic()
    out = _run(
        """
        from mmjax.storage.paths import StorageError, write_text
        try:
            write_text("gs://test-bucket/run/a.txt", "x")
        except StorageError as e:
            print("ERROR", e)
        """,
        {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{free_port()}"},  # nothing listens
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ERROR cannot write gs://test-bucket/run/a.txt: cannot reach http://127.0.0.1:" in (
        out.stdout
    )
    assert time.monotonic() - start < 150  # gcsfs's bounded retries, then the error


# -- end to end -------------------------------------------------------------------------------


def _train_command(workdir: str, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "mmjax.train",
        "--config=configs/demo_tokenizer.py:modality=rgb,quick", f"--workdir={workdir}",
        "--config.data.batch_size=8", "--config.eval.usage_images=8",
        "--config.checkpoint.every=4", "--config.checkpoint.async_save=False", *overrides,
    ]  # fmt: skip


@pytest.mark.slow
def test_tokenizer_run_on_gcs_is_killed_resumes_exports_and_loads(gcs_server):
    from mmjax.configs import load
    from mmjax.tokenizers import Tokenizer
    from mmjax.train.tokenizer_trainer import TokenizerTrainer, reconstruction_metrics

    workdir = f"{BUCKET}/run"
    env = {**os.environ, "PYTHONPATH": ROOT}
    # A run far longer than the test, killed once its first checkpoint is committed.
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            _train_command(workdir, "--config.total_steps=1000"),
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 400
        try:
            while not paths.glob(f"{workdir}/checkpoints/*/commit_success.txt"):
                assert proc.poll() is None, f"training stopped early ({proc.returncode})"
                assert time.monotonic() < deadline, "no checkpoint within the time limit"
                time.sleep(1)
        except AssertionError:
            log.seek(0)
            raise AssertionError(log.read()[-4000:]) from None
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert paths.exists(f"{workdir}/config.json")
    rerun = subprocess.run(
        _train_command(workdir, "--config.total_steps=8"),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resumed from step" in rerun.stdout + rerun.stderr
    rows = [json.loads(x) for x in paths.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    assert max(r["step"] for r in rows) == 8 and any("eval/psnr" in r for r in rows)
    assert paths.glob(f"{workdir}/eval/*.png") and paths.glob(f"{workdir}/events.out.tfevents.*")
    # The bundle read from gs:// reproduces the run's last evaluation of its weights.
    config = load("demo_tokenizer", "modality=rgb,quick")
    config.data.batch_size, config.eval.usage_images, config.total_steps = 8, 8, 8
    val = TokenizerTrainer(config).val_raw
    tok = Tokenizer.load(workdir)
    decoded = np.asarray(tok.decode(tok.encode(val)))
    assert decoded.shape == val.shape
    last = [r for r in rows if "eval/psnr" in r][-1]
    assert last["step"] == 8
    for k, v in reconstruction_metrics("rgb", val, decoded).items():
        np.testing.assert_allclose(last[f"eval/{k}"], v, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_pretokenize_to_gcs_then_a_4m_run_reads_it(gcs_server, tmp_path, untrained_tokenizers):
    from mmjax.data.pretokenized import PretokenizedSource
    from mmjax.data.text_vocab import scenes_text_tokenizer
    from tests.test_fourm_trainer import MODEL, QUANT, R, quick

    dirs = untrained_tokenizers(("rgb", "depth"), MODEL, QUANT, R)
    text = str(tmp_path / "text.json")
    scenes_text_tokenizer(300, 600).save(text)
    tokenizers = ",".join(f"{m}={d}" for m, d in dirs.items())
    data = {}
    for split, n in (("train", 48), ("validation", 16)):
        for where in ("local", "gcs"):
            out = f"{BUCKET}/data/{split}" if where == "gcs" else str(tmp_path / split)
            run = subprocess.run(
                [
                    sys.executable, "-m", "mmjax.pretokenize", "--tokenizers", tokenizers,
                    "--out", out, "--split", split, "--num-examples", str(n), "--resolution",
                    str(R), "--text-tokenizer", text, "--shards", "2", "--batch-size", "16",
                ],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                text=True, timeout=600,
            )  # fmt: skip
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
            data[split, where] = out
    assert not paths.exists(f"{BUCKET}/data/train.partial")
    for split in ("train", "validation"):
        a = PretokenizedSource(data[split, "gcs"], pixels="uint8")
        b = PretokenizedSource(data[split, "local"], pixels="uint8")
        assert len(a) == len(b) and a.modalities == b.modalities
        for i in range(len(a)):
            for name, value in a[i].items():
                np.testing.assert_array_equal(value, b[i][name])
    from mmjax.train.fourm_trainer import train_fourm

    gcs = {"train": data["train", "gcs"], "validation": data["validation", "gcs"]}
    final = train_fourm(quick(gcs, steps=4), f"{BUCKET}/fourm")
    assert np.isfinite(final["eval/loss/tok_rgb"])
    rows = [json.loads(x) for x in paths.read_text(f"{BUCKET}/fourm/metrics.jsonl").splitlines()]
    assert rows[-1]["step"] == 4
    assert paths.exists(f"{BUCKET}/fourm/config.json")
