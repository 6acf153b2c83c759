"""Studies over datasets: --datasets picks a subset; unprepared datasets stop a study in one
line (prepared and not, and the command that prepares the rest) or, with --skip-missing, are
left out and said so under the table."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hivg.data.manifest import records_to_table, write_table
from hivg.errors import UserError
from hivg.orchestration.search_space import load_study
from hivg.orchestration.study_datasets import plan_datasets

REPO = Path(__file__).resolve().parents[1]
FIVE = ["refcoco", "refcoco+", "refcocog-umd", "referit", "flickr30k"]


def study_file(tmp_path: Path, datasets: str = "all", data_dir: Path | None = None,
               extra: str = "") -> Path:
    path = tmp_path / "five.yaml"
    path.write_text(f"name: five\nbase: tiny\ndatasets: {datasets}\n"
                    "resources: {workers: 0, cpus_per_worker: 1}\n"
                    + (f"overrides:\n  data.data_dir: {data_dir}\n{extra}" if data_dir else "")
                    + "variants:\n  baseline: {}\n")
    return path


def prepared(data_dir: Path, *datasets: str, splits=("train", "val", "test")) -> Path:
    """Manifests as prepare_data.py leaves them (real, empty Parquet files)."""
    for d in datasets:
        for s in splits:
            write_table(records_to_table([]), data_dir / d / f"{s}.parquet")
    return data_dir


@pytest.mark.parametrize("ready, requested, skip, runs, skipped", [
    (FIVE, None, False, FIVE, []),
    (FIVE[:3], None, True, FIVE[:3], FIVE[3:]),
    (FIVE[:3], ["referit", "refcoco"], True, ["refcoco"], ["referit"]),  # the study's order
    (FIVE[:3], ["refcoco+", "refcoco"], False, ["refcoco", "refcoco+"], []),
    (FIVE, ["all"], False, FIVE, []),
])
def test_the_plan_runs_what_is_chosen_and_prepared(tmp_path, ready, requested, skip, runs, skipped):
    data = prepared(tmp_path / "data", *ready)
    study, plan = plan_datasets(load_study(study_file(tmp_path)), data, "runs",
                                requested=requested, skip_missing=skip)
    assert study.datasets == runs and plan.run == runs and plan.skipped == skipped
    if skipped:
        assert plan.note.startswith(f"not run: {', '.join(skipped)} (not prepared in {data}; "
                                    "--skip-missing)")
    else:
        assert plan.note is None


def test_unprepared_datasets_stop_the_study_in_one_line_with_the_command(tmp_path):
    data = prepared(tmp_path / "data", "refcoco", "refcocog-umd")
    prepared(data, "referit", splits=("train",))  # no val: not ready
    with pytest.raises(UserError) as caught:
        plan_datasets(load_study(study_file(tmp_path)), data, "s3://bucket/runs")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"datasets: prepared in {data}: refcoco, refcocog-umd; "
                              "not prepared: refcoco+, referit, flickr30k. Prepare them with: "
                              "python pipelines/prepare_data.py --dataset refcoco+ referit "
                              "flickr30k --image-root DIR --storage s3://bucket/runs")
    assert message.endswith("; or --skip-missing to run the prepared ones")


@pytest.mark.parametrize("ready, requested, skip, message", [
    ([], None, True, "prepared in .*: none; not prepared: refcoco, "),
    (FIVE, ["mixup"], False, r"--datasets: mixup not among the study's datasets \(refcoco, "),
])
def test_nothing_to_run_or_a_foreign_name_is_refused(tmp_path, ready, requested, skip, message):
    data = prepared(tmp_path / "data", *ready)
    with pytest.raises(UserError, match=message):
        plan_datasets(load_study(study_file(tmp_path)), data, "runs", requested=requested,
                      skip_missing=skip)


def test_the_synthetic_benchmark_counts_as_prepared(tmp_path):
    study, plan = plan_datasets(load_study(study_file(tmp_path, "[synthetic]")),
                                tmp_path / "empty", "runs")
    assert plan.run == ["synthetic"] and plan.note is None


def ablate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="hivg-ray-", dir="/tmp")  # short: AF_UNIX path limit
    return subprocess.run([sys.executable, str(REPO / "pipelines" / "ablate.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp})


def test_ablate_over_all_stops_before_ray_when_datasets_are_missing(tmp_path):
    data = prepared(tmp_path / "data", "refcoco", "referit")
    result = ablate(tmp_path, str(study_file(tmp_path, data_dir=data)),
                    "--storage", str(tmp_path / "runs"), "--no-mlflow")
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "prepared in" in line and ": refcoco, referit; not prepared: refcoco+, " \
        "refcocog-umd, flickr30k. Prepare them with: python pipelines/prepare_data.py " \
        "--dataset refcoco+ refcocog-umd flickr30k" in line
    assert f"--storage {tmp_path / 'runs'}" in line
    assert not (tmp_path / "runs" / "five").exists()


@pytest.mark.slow
def test_skip_missing_runs_what_is_prepared_and_says_so_under_the_table(synthetic_storage,
                                                                        tmp_path):
    study = study_file(tmp_path, "[synthetic, refcoco, referit]",
                       data_dir=synthetic_storage / "data", extra="""  model.weights: random
  data.max_train_samples: 32
  data.max_eval_samples: 20
  data.num_workers: 0
  hilora.stages.stage0.epochs: 1
  hilora.stages.stage0.batch_size: 8
  hilora.stages.stage1.epochs: 0
  hilora.stages.stage2.epochs: 0
""")
    result = ablate(tmp_path, str(study), "--storage", str(tmp_path / "runs"), "--no-mlflow",
                    "--skip-missing", "--datasets", "synthetic", "refcoco")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    table = next(i for i, l in enumerate(lines) if l.startswith("| variant | synthetic val | synthetic test |"))
    assert lines[table + 2].startswith("| baseline | ")
    assert "refcoco" not in lines[table]  # a column for the run dataset only
    # Said before the trials start, and again under the table (after its own notes).
    first, note = [i for i, l in enumerate(lines) if l.startswith("not run: ")]
    assert first < table
    assert note > table + 2
    assert lines[note].startswith("not run: refcoco (not prepared in ")
    assert "referit" not in lines[note]  # not picked by --datasets: not a skip
    assert len(list((tmp_path / "runs" / "five" / "trials").iterdir())) == 1
