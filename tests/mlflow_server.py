"""A real `mlflow server` on 127.0.0.1 for tests (imported as `mlflow_server`: pytest puts
tests/ on the path).

    from mlflow_server import mlflow_server  # noqa: F401  (the module-scoped fixture)

    def test_x(mlflow_server): ...            # mlflow_server.url, .root, .get(...)

The server runs in its own process group, stopped by that group's id (never by name).
Its database, artifacts, HOME and TMPDIR all live in a temporary folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

START_TIMEOUT_S = 60.0


def free_port() -> int:
    """A port nothing listens on right now (also what an 'unreachable' URI can use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MlflowServer:
    url: str
    root: Path
    process: subprocess.Popen

    def get(self, endpoint: str, **params: Any) -> dict[str, Any]:
        """GET a REST endpoint (`/api/2.0/mlflow/runs/get`) and decode its JSON."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{endpoint}?{query}", timeout=10) as r:
            return json.loads(r.read())


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn workers included), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def running_mlflow_server(root: Path, timeout: float = START_TIMEOUT_S) -> Iterator[MlflowServer]:
    """Start `mlflow server` with an SQLite store and served artifacts under `root`."""
    root = Path(root)
    for d in ("home", "tmp", "artifacts"):
        (root / d).mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(HOME=str(root / "home"), TMPDIR=str(root / "tmp"), PYTHONUNBUFFERED="1")
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
            start_new_session=True)  # its own process group: stopped as a whole below
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow server at {url} did not become healthy within "
                                   f"{timeout:g} s (exit code {process.poll()}):\n{tail}")
            time.sleep(0.5)
        yield MlflowServer(url, root, process)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server
