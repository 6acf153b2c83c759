"""train.py and evaluate.py as a user runs them: exit codes, one-line errors, outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FAST = ["model.weights=random", "hilora.stages.stage0.epochs=1", "hilora.stages.stage1.epochs=0",
        "hilora.stages.stage2.epochs=0", "hilora.stages.stage0.batch_size=16"]


def run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "pipelines" / script), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def bad_weights(tmp_path: Path) -> str:
    from hivg.model.backbone import create_clip

    state = create_clip("hivg-tiny").state_dict()
    state["visual.conv1.weight"] = torch.zeros(64, 3, 16, 16)  # another width
    path = tmp_path / "other-arch.pt"
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("override, message", [
    ("optim.nope=1", "optim.nope: unknown key"),
    ("seed=abc", "seed: expected an integer"),
    ("model.bridge.vision_layers=[0,7]", "model.bridge.vision_layers: expected layers < 4"),
    ("hilora.stages.stage1.rank=0", "hilora.stages.stage1.rank: expected a LoRA rank >= 1"),
    ("hilora.stages.stage2.vision_layers=[3,1]", "vision_layers: expected a non-empty range"),
    ("data.dataset=refcoco", "no prepared dataset 'refcoco'"),
    ("model.weights=BAD", "visual.conv1.weight"),
    # hilora.num_stages is a key like any other: applied first, so FAST's stage2 key is gone
    ("hilora.num_stages=2", "hilora.stages.stage2: no list item 'stage2'"),
    ("hilora.num_stages=9", "hilora.num_stages: expected an integer in 1..3"),
    ("model.weights=null", "model.weights: not set; expected an open_clip tag of hivg-tiny"),
    ("model.weights=openia", "model.weights: openia: not a local file or folder, nor an "
                             "open_clip tag of hivg-tiny"),
])
def test_bad_configuration_fails_before_training_with_one_line(synthetic_storage, tmp_path,
                                                                override, message):
    if override == "model.weights=BAD":
        override = f"model.weights={bad_weights(tmp_path)}"
    result = run("train.py", "--storage", str(synthetic_storage), "--name", "bad", "--quiet",
                 *FAST, override)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (synthetic_storage / "bad" / "metrics.jsonl").exists()


def test_b16_from_openai_without_cache_or_network_stops_in_one_line(synthetic_storage, tmp_path):
    """The preset starts from OpenAI's CLIP; with no cached copy and no network (the hub is
    offline in the tests) train.py stops before building anything, naming the tag and the fix."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "train.py"), "--preset", "hivg-b16",
         "--storage", str(synthetic_storage), "--name", "b16-offline", "--no-mlflow",
         "data.dataset=synthetic"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: model.weights: openai: the open_clip weights of "
                           "ViT-B-16-quickgelu are not in the Hugging Face cache"), line
    assert "pretrained='openai'" in line and "or pass a local file or folder" in line
    assert not (synthetic_storage / "b16-offline").exists()


def test_train_then_evaluate_the_selected_checkpoint(synthetic_storage):
    result = run("train.py", "--storage", str(synthetic_storage), "--name", "cli-run", "--quiet",
                 *FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    # Random initialisation only by name: printed, and recorded in MLflow's params.
    assert "model.weights=random: hivg-tiny starts from random values" in result.stdout
    run_dir = synthetic_storage / "cli-run"
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{synthetic_storage.resolve()}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (tracked,) = client.search_runs(experiments, f"tags.run_folder = '{run_dir.resolve()}'")
    assert tracked.data.params["model.weights"] == "random"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["energy_kwh"] is None  # a CPU run: nothing to meter, and no error
    assert "test" in result.stdout and f"results: {run_dir}" in result.stdout
    # The baselines are printed beside the model's accuracy.
    assert "largest_object" in result.stdout

    result = run("evaluate.py", "--checkpoint", str(run_dir / "checkpoints" / "best.pt"),
                 "--dataset", "synthetic", "--split", "test", "--storage", str(synthetic_storage))
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("test"))
    assert float(line.split()[-1]) == pytest.approx(summary["test/acc50"], abs=1e-4)
    assert (run_dir / "eval" / "synthetic" / "test.parquet").is_file()
    # The miss breakdown: a hit's box centre lies inside its target, so acc50 is the share
    # of right objects times the hit rate among them.
    words = next(l for l in result.stdout.splitlines() if "right object chosen" in l).split()
    located, if_located = float(words[-6].rstrip(";")), float(words[-1])
    assert located * if_located == pytest.approx(summary["test/acc50"], abs=2e-3)

    # A file that is not a training checkpoint: exit 2, one line.
    clip_only = synthetic_storage / "clip-only.pt"
    torch.save({"state_dict": {}}, clip_only)
    result = run("evaluate.py", "--checkpoint", str(clip_only), "--dataset", "synthetic",
                 "--storage", str(synthetic_storage))
    assert result.returncode == 2 and "not a HiVG training checkpoint" in result.stderr
