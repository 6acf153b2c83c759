"""The stage cache inside the trainer, and the MLflow run lifecycle of a training run.

Real tiny model, real synthetic data, real MLflow (sqlite)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hivg.analysis.stage_savings import StageEpochs, stage_epochs
from hivg.run_folder import RunFolder, Trial
from hivg.train import fit as fit_module
from hivg.train.checkpoint import load_checkpoint
from hivg.train.fit import fit
from hivg.train.hooks import TrainHooks
from hivg.train.stage_cache import StageCache, code_fingerprint, data_fingerprint, stage_key
from test_train import Sabotaged, records, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def run(config, run_dir: Path, cache: StageCache, hooks=None) -> list[str]:
    messages: list[str] = []
    fit(config, run_dir, hooks=hooks, log=messages.append, show_progress=False,
        stage_cache=cache)
    return messages


class Reports(TrainHooks):
    """What a searcher would see; stops the run (like ASHA) after `stop_after` reports."""

    def __init__(self, stop_after: int | None = None):
        self.seen: list[dict] = []
        self.stop_after = stop_after

    def report(self, metrics, checkpoint):
        self.seen.append({k: metrics[k] for k in ("stage_index", "epoch", "global_epoch",
                                                  "val/acc50")})
        if self.stop_after is not None and len(self.seen) == self.stop_after:
            raise KeyboardInterrupt("stopped by the scheduler")


def reused(messages: list[str]) -> list[str]:
    return [m.split("]")[0].lstrip("[") for m in messages if "reused from the stage cache" in m]


def stage_rows(run_dir: Path, stage: str) -> list[dict]:
    return [{k: v for k, v in r.items()
             if k not in ("time/epoch_s", "samples_per_s", "reused")}
            for r in records(run_dir) if r["stage"] == stage]


@pytest.mark.slow
def test_stage_cache_reuses_a_shared_prefix_and_retrains_what_changed(synthetic_storage,
                                                                      tmp_path):
    cache = StageCache(tmp_path / "stage-cache", log=lambda _m: None)
    base = tiny_config(synthetic_storage / "data", epochs=(1, 1, 1), batch=16)
    trained = Reports()
    first = run(base, tmp_path / "a", cache, trained)
    assert reused(first) == [] and len(cache.entries()) == 3

    # Differs only in its last stage: stages 0 and 1 come from the cache, stage 2 trains.
    last_changed = base.replace({"hilora.stages.stage2.lr": 1e-5})
    replayed = Reports()
    second = run(last_changed, tmp_path / "b", cache, replayed)
    assert reused(second) == ["stage0", "stage1"]
    # A searcher sees a reused stage's epochs exactly as they were reported when trained.
    assert replayed.seen[:2] == trained.seen[:2] and len(replayed.seen) == 3
    assert stage_rows(tmp_path / "b", "stage0") == stage_rows(tmp_path / "a", "stage0")
    a1 = load_checkpoint(tmp_path / "a" / "checkpoints" / "stage1_best.pt")["model"]
    b1 = load_checkpoint(tmp_path / "b" / "checkpoints" / "stage1_best.pt")["model"]
    assert all(torch.equal(a1[k], b1[k]) for k in a1)
    assert [r["global_epoch"] for r in records(tmp_path / "b")] == \
        [r["global_epoch"] for r in records(tmp_path / "a")]
    # What the cache saved, as a study counts it from the run folders.
    both = [Trial.read(RunFolder(tmp_path / d)) for d in "ab"]
    assert stage_epochs(both[:1]) == StageEpochs(trained=3, reused=0)
    assert stage_epochs(both) == StageEpochs(trained=4, reused=2)
    assert stage_epochs(both).line() == "stage cache: 4 of 6 stage-epochs trained, 2 reused"

    # A scheduler stopping the run during the replay stops its record there too.
    with pytest.raises(KeyboardInterrupt):
        run(last_changed, tmp_path / "stopped", cache, Reports(stop_after=1))
    assert [r["stage"] for r in records(tmp_path / "stopped") if r["epoch"] >= 1] == ["stage0"]

    # An upstream change (stage 0's learning rate) invalidates every later stage.
    upstream = base.replace({"hilora.stages.stage0.lr": 2e-3})
    assert reused(run(upstream, tmp_path / "c", cache)) == []

    # A corrupt entry is detected, set aside and retrained, never loaded.
    key = stage_key(base, 0, data_fingerprint(base.data.data_dir, "synthetic"),
                    code_fingerprint(), "cpu", 1)
    entry = tmp_path / "stage-cache" / key
    assert entry.is_dir()
    data = bytearray((entry / "best.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (entry / "best.pt").write_bytes(bytes(data))
    warnings: list[str] = []
    cache.log = warnings.append
    again = run(base, tmp_path / "d", cache)
    assert "stage0" not in reused(again)
    assert any(entry.name in w for w in warnings)
    assert cache.lookup(entry.name) is not None  # republished by the retraining


def test_mlflow_run_ends_failed_when_training_raises(synthetic_storage, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from hivg.orchestration.run import TrackingOptions, run_training

    real = fit_module.build_criterion

    def nan_at_first_step(call, losses):
        losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(fit_module, "build_criterion",
                        lambda c: Sabotaged(real(c), nan_at_first_step))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(synthetic_storage / "data", epochs=(1, 0, 0))
    with pytest.raises(fit_module.NonFiniteLossError):
        run_training(config, tmp_path, tmp_path / "nan", show_progress=False,
                     log=lambda _m: None, tracking=TrackingOptions(uri=uri, experiment="e"))
    runs = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("e").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.slow
def test_sigterm_marks_the_mlflow_run_killed_and_resume_finishes_the_same_run(
        synthetic_storage, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "data").symlink_to(synthetic_storage / "data")
    args = [sys.executable, str(ROOT / "pipelines" / "train.py"), "--storage", str(storage),
            "--name", "interrupted", "--quiet", "model.weights=random",
            "hilora.stages.stage0.epochs=6", "hilora.stages.stage0.batch_size=4"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = storage / "interrupted" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and
                                          len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, out

    uri = f"sqlite:///{storage.resolve() / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([experiment])
    assert [r.info.status for r in runs] == ["KILLED"], out

    done = subprocess.run(args + ["--resume"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = client.search_runs([experiment])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(runs[0].info.run_id, "FINISHED")]
    epochs = [(r["stage"], r["epoch"]) for r in map(json.loads, metrics.read_text().splitlines())]
    assert len(epochs) == len(set(epochs))
    assert "mlflow ui --backend-store-uri" in done.stdout
