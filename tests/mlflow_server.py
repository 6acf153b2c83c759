"""A real `mlflow server` on 127.0.0.1 for tests (imported as `mlflow_server`: pytest puts
tests/ on the path).

    from mlflow_server import mlflow_server  # noqa: F401  (the module-scoped fixture)

    def test_x(mlflow_server): ...            # mlflow_server.url, .root, .get(...)

The server is tools.mlflow_server.mlflow_server: its own process group, stopped by id.
Its database, artifacts, HOME and TMPDIR all live in a temporary folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tools.mlflow_server import mlflow_server as start_mlflow_server

START_TIMEOUT_S = 60.0


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


@contextlib.contextmanager
def running_mlflow_server(root: Path, timeout: float = START_TIMEOUT_S) -> Iterator[MlflowServer]:
    """Start `mlflow server` with an SQLite store and served artifacts under `root`."""
    root = Path(root)
    for d in ("home", "tmp", "artifacts"):
        (root / d).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(HOME=str(root / "home"), TMPDIR=str(root / "tmp"))
    with start_mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root,
                       artifacts_destination=root / "artifacts", env=env,
                       timeout=timeout) as (url, process):
        yield MlflowServer(url, root, process)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server
