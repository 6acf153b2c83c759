"""A local `mlflow server` process on 127.0.0.1: for the UI screenshot tool and the tests.

The server runs in its own process group and is stopped by that group's id (never by name),
so uvicorn's worker processes go with it.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping

from hivg.errors import UserError
from tools.processes import free_port, stop_process_group

START_TIMEOUT_S = 120.0


def healthy(url: str) -> bool:
    """Whether an MLflow server answers its /health endpoint."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def mlflow_server(backend_uri: str, workdir: Path, *, artifacts_destination: Path | None = None,
                  env: Mapping[str, str] | None = None, timeout: float = START_TIMEOUT_S
                  ) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `mlflow server --backend-store-uri backend_uri` on a free loopback port; yields
    (url, process) once /health answers. Its log is workdir/server.log; a server that exits
    or does not answer within `timeout` raises UserError with the log's last lines."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", "--backend-store-uri", backend_uri]
    if artifacts_destination is not None:
        command += ["--artifacts-destination", str(artifacts_destination)]
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
            start_new_session=True)  # its own process group, stopped as a whole below
    try:
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                raise UserError(f"mlflow server over {backend_uri} did not answer at {url} "
                                f"within {timeout:g} s (exit code {process.poll()}): "
                                + (" | ".join(tail) if tail else "no output"))
            time.sleep(0.5)
        yield url, process
    finally:
        stop_process_group(process)
