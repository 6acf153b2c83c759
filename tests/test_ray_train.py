"""HiVG on Ray Train (real local Ray, real gloo DDP, real MLflow server): exact sharded
evaluation, a worker killed for real mid-epoch, resources checked before start."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from mlflow_server import mlflow_server  # noqa: E402,F401  (fixture)

from hivg.errors import UserError  # noqa: E402
from hivg.orchestration.resources import Resources  # noqa: E402
from hivg.orchestration.run import TrackingOptions, run_training  # noqa: E402
from hivg.run_folder import config_digest  # noqa: E402
from hivg.train.inference import evaluate_checkpoint  # noqa: E402
from test_train import records, tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def ray_workers(run_dir: Path) -> list[psutil.Process]:
    """This test's Ray Train worker processes (their titles name the worker class)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "RayTrainWorker" in cmd:
            found.append(p)
    return found


@pytest.mark.slow
def test_two_workers_train_evaluate_exactly_and_log_to_an_mlflow_server(
        local_ray, synthetic_storage, tmp_path, mlflow_server):
    config = tiny_config(synthetic_storage / "data", epochs=(1, 1, 0), batch=8)
    run_dir = tmp_path / "runs" / "ddp2"
    summary = run_training(
        config, tmp_path / "runs", run_dir, show_progress=False, log=lambda _m: None,
        tracking=TrackingOptions(uri=mlflow_server.url, experiment="ray-test", log_model=True),
        resources=Resources(workers=2))
    assert summary["world_size"] == 2 and summary["global_batch"] == 16
    rows = records(run_dir)
    keys = [(r["stage"], r["epoch"]) for r in rows]
    assert keys == [("stage0", 0), ("stage0", 1), ("stage1", 0), ("stage1", 1), ("stage2", 0)]

    # Exact evaluation under DDP: the 2-worker number equals a 1-process evaluation of the
    # same checkpoint, every expression counted once.
    single = evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", "synthetic",
                                 synthetic_storage / "data", ["val", "test"], tmp_path / "eval",
                                 device="cpu")
    for split in ("val", "test"):
        assert summary["splits"][split]["count"] == single[split]["count"] == 20
        assert single[split]["acc50"] == pytest.approx(summary[f"{split}/acc50"], abs=1e-9)

    # Read everything back through the server's REST API.
    exp = mlflow_server.get("/api/2.0/mlflow/experiments/get-by-name", experiment_name="ray-test")
    found = json.loads(_post(mlflow_server.url, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [exp["experiment"]["experiment_id"]]}))["runs"]
    assert len(found) == 1
    run = found[0]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["run_name"] == f"tiny/synthetic/baseline/seed13-{config_digest(config)}"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["hilora.stages.stage0.lr"] == str(config.hilora.stages[0].lr)
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["world_size"] == "2" and tags["dataset"] == "synthetic"
    assert tags["code_fingerprint"] and tags["device_type"] == "cpu"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["test/acc50"] == pytest.approx(summary["test/acc50"])
    history = mlflow_server.get("/api/2.0/mlflow/metrics/get-history",
                                run_id=run["info"]["run_id"], metric_key="val/acc50")
    assert sorted(m["step"] for m in history["metrics"]) == [0, 1, 1, 2, 2]
    artifacts = mlflow_server.get("/api/2.0/mlflow/artifacts/list", run_id=run["info"]["run_id"])
    names = {f["path"] for f in artifacts["files"]}
    assert {"summary.json", "config.yaml", "predictions", "checkpoints"} <= names


def _post(url: str, endpoint: str, body: dict) -> str:
    import urllib.request

    req = urllib.request.Request(f"{url}{endpoint}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


@pytest.mark.slow
def test_a_worker_killed_mid_epoch_resumes_from_the_last_checkpoint(
        local_ray, synthetic_storage, tmp_path):
    config = tiny_config(synthetic_storage / "data", epochs=(4, 0, 0), batch=2)
    run_dir = tmp_path / "runs" / "killed"
    killed: list[int] = []

    def kill_one_worker_during_epoch_2():
        deadline = time.time() + 240
        while time.time() < deadline:
            path = run_dir / "metrics.jsonl"
            if path.is_file() and any(r["epoch"] == 1 for r in records(run_dir)):
                time.sleep(0.3)  # into epoch 2
                workers = ray_workers(run_dir)
                if workers:
                    victim = workers[-1]
                    killed.append(victim.pid)
                    os.kill(victim.pid, signal.SIGKILL)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_one_worker_during_epoch_2, daemon=True)
    killer.start()
    summary = run_training(config, tmp_path / "runs", run_dir, show_progress=False,
                           log=lambda _m: None, tracking=TrackingOptions(enabled=False),
                           resources=Resources(workers=2), max_failures=2)
    killer.join(5)
    assert killed, "no Ray Train worker was found to kill"
    keys = [(r["stage"], r["epoch"]) for r in records(run_dir)]
    assert keys == [("stage0", e) for e in range(5)] + [("stage1", 0), ("stage2", 0)]
    assert summary["epochs_trained"] == 4


def test_more_workers_than_the_cluster_has_fails_before_start(local_ray, synthetic_storage,
                                                               tmp_path):
    config = tiny_config(synthetic_storage / "data")
    with pytest.raises(UserError, match=r"asked for 64 CPUs .* the cluster has 4"):
        run_training(config, tmp_path, tmp_path / "r", tracking=TrackingOptions(enabled=False),
                     resources=Resources(workers=64))
    with pytest.raises(UserError, match=r"asked for 2 GPUs, the cluster has 0"):
        run_training(config, tmp_path, tmp_path / "r", tracking=TrackingOptions(enabled=False),
                     resources=Resources(workers=2, gpus_per_worker=1))
    assert not (tmp_path / "r").exists()  # nothing started, nothing written


@pytest.mark.parametrize("flags, message", [
    (["--workers", "1", "--address", "127.0.0.1:9"], "--address 127.0.0.1:9: no Ray cluster"),
    (["--mlflow-uri", "http://127.0.0.1:9"], "MLflow tracking URI http://127.0.0.1:9 is unreachable"),
])
def test_unreachable_services_fail_with_one_line(synthetic_storage, tmp_path, flags, message):
    result = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "train.py"), "--storage", str(synthetic_storage),
         "--name", "unreachable", *flags, "model.weights=random"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
