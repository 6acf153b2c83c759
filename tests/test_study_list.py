"""`ablate.py --list` / `sweep.py --list`: the studies under a storage, each with its trials
finished, errored, started and pending and its best so far; a folder and s3:// storage.
The studies are written with the project's own run folder writers (no training)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hivg.run_folder import TRIALS, RunFolder, safe_name

pytest_plugins = ["s3_server"]  # the s3 and s3_server fixtures
REPO = Path(__file__).resolve().parents[1]

VARIANTS = """base: tiny
datasets: [synthetic]
seeds: [13]
variants:
  baseline: {}
  no-bridge: {model.bridge.enabled: false}
  wide: {hilora.stages.stage1.rank: 16}
"""
SPACE = """base: tiny
datasets: [synthetic]
num_samples: 3
space:
  hilora.stages.stage0.lr: {choice: [1.0e-3, 1.0e-4]}
"""


def write_trial(study_dir: Path, key: str, val: float | None, finished: bool) -> None:
    """A run folder as a trial leaves it: config, one epoch, and a summary when it finished."""
    variant, dataset, seed = key.split("/")
    folder = RunFolder(study_dir / TRIALS / safe_name(key))
    folder.prepare(f"variant: {variant}\nseed: {seed[4:]}\ndata: {{dataset: {dataset}}}\n",
                   resume=False)
    folder.metrics_path.write_text(json.dumps({"epoch": 1, "val/acc50": val}) + "\n")
    if finished:
        folder.write_summary({"best": {"val/acc50": val}, "epochs_trained": 1})


def make_studies(storage: Path) -> None:
    abl = storage / "abl"
    abl.mkdir(parents=True)
    (abl / "study.yaml").write_text(VARIANTS)
    write_trial(abl, "baseline/synthetic/seed13", 0.6, finished=True)
    write_trial(abl, "no-bridge/synthetic/seed13", 0.1, finished=False)
    write_trial(abl, "old/synthetic/seed13", 0.9, finished=True)  # removed from the file
    (abl / "results.json").write_text(json.dumps(
        {"failed_trials": ["no-bridge/synthetic/seed13: RuntimeError: boom"]}))
    space = storage / "sp"
    space.mkdir()
    (space / "study.yaml").write_text(SPACE)
    write_trial(space, "t000/synthetic/seed13", 0.4, finished=True)
    write_trial(space, "t001/synthetic/seed13", 0.7, finished=False)  # running or stopped
    (storage / "data").mkdir()  # not a study


# (study, kind, finished, errored, started, pending, best so far)
EXPECTED = [("abl", "variants", 1, 1, 0, 1, "val/acc50 0.6000 (baseline_synthetic_seed13)"),
            ("sp", "space", 1, 0, 1, 1, "val/acc50 0.4000 (t000_synthetic_seed13)")]


def listed(stdout: str) -> list[tuple]:
    rows = []
    for line in stdout.strip().splitlines()[2:]:
        name, kind, *counts = line.split(None, 6)
        *numbers, best = counts
        rows.append((name, kind, *map(int, numbers), best))
    return rows


def list_command(script: str, storage: str, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, str(REPO / "pipelines" / script), "--list",
                           "--storage", storage], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={**(env or os.environ), "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("script", ["ablate.py", "sweep.py"])
def test_list_shows_each_study_in_a_folder_with_its_trials_and_best(tmp_path, script):
    make_studies(tmp_path / "storage")
    result = list_command(script, str(tmp_path / "storage"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"studies under {tmp_path / 'storage'}:"
    assert lines[1].split()[:6] == ["study", "kind", "finished", "errored", "started",
                                    "pending"]
    assert listed(result.stdout) == EXPECTED


def test_list_reads_s3_storage(s3, tmp_path):
    local = tmp_path / "storage"
    make_studies(local)
    for path in local.rglob("*"):
        if path.is_file():
            s3.client.upload_file(str(path), s3.bucket, f"team/{path.relative_to(local)}")
    result = list_command("ablate.py", f"s3://{s3.bucket}/team", dict(os.environ))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == f"studies under s3://{s3.bucket}/team:"
    assert listed(result.stdout) == EXPECTED


def test_list_of_an_empty_storage_says_so(tmp_path):
    result = list_command("ablate.py", str(tmp_path / "nothing"))
    assert result.returncode == 0 and result.stdout.strip() == \
        f"no studies under {tmp_path / 'nothing'}"
