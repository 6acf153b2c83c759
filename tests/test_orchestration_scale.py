"""`benchmark.py --orchestration-scale` at a small size: both paths run the same no-op
trials to the end, every trial's MLflow child run ends, and the table, report and driver
profile are written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_scale_benchmark_runs_both_paths_to_the_end(tmp_path):
    out = tmp_path / "scale.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "benchmark.py"), "--orchestration-scale",
         "--trials", "6", "--max-concurrent", "2", "--results-per-trial", "3",
         "--out", str(out), "--storage", str(tmp_path / "runs")], capture_output=True, text=True,
        cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads(out.read_text())
    bare, project = record["bare_tune"], record["project"]
    assert (bare["finished"], bare["failed"]) == (6, 0)
    assert (project["finished"], project["failed"]) == (6, 0)
    assert project["mlflow"]["runs_ended"] == 6
    assert record["ratio_project_to_bare"] == pytest.approx(
        project["per_result_ms"] / bare["per_result_ms"])
    assert bare["per_result_ms"] == pytest.approx(1000 * bare["wall_s"] / 18)
    assert "run_study" in Path(record["profile"]).read_text()
    assert Path(record["storage"]).is_relative_to(tmp_path)
    assert "| project study path |" in result.stdout
