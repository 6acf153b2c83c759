"""Studies on a real local Ray Tune with real MLflow (sqlite): variants as a grid, a space
with Optuna TPE + ASHA, deterministic run identity, only validation metrics reaching Tune."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from hivg.orchestration.search_space import load_study  # noqa: E402
from hivg.orchestration.tune import StudyOptions, finished_result, run_study  # noqa: E402
from hivg.run_folder import RunFolder  # noqa: E402

SHORT = """
overrides:
  data.max_train_samples: 32
  data.max_eval_samples: 20
  data.num_workers: 0
  model.weights: null
  hilora.stages.stage0.epochs: {e0}
  hilora.stages.stage0.batch_size: 8
  hilora.stages.stage1.epochs: 0
  hilora.stages.stage2.epochs: 0
"""


def write_study(tmp_path: Path, data_dir: Path, body: str, e0: int = 1) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text("base: tiny\ndatasets: [synthetic]\n"
                    + SHORT.format(e0=e0).replace("overrides:\n",
                                                  f"overrides:\n  data.data_dir: {data_dir}\n")
                    + body)
    return path


def tune_results(study_dir: Path) -> list[dict]:
    rows = []
    for path in (study_dir / "tune").glob("**/result.json"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def runs_of(uri: str, experiment: str):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_variant_study_runs_every_trial_once_into_mlflow(local_ray, synthetic_storage, tmp_path,
                                                        capfd):
    path = write_study(tmp_path, synthetic_storage / "data", """
seeds: [13]
resources: {workers: 1, cpus_per_worker: 1}
variants:
  baseline: {}
  no-bridge: {model.bridge.enabled: false}
""")
    study = load_study(path)
    storage = tmp_path / "storage"
    uri = f"sqlite:///{storage.resolve()}/mlflow.db"
    options = StudyOptions(name="mini", workers_per_trial=0, mlflow_uri=uri)
    table = run_study(study, storage, options, log=lambda _m: None)
    assert [(r["variant"], r["dataset"], r["seeds"]) for r in table["rows"]] == \
        [("baseline", "synthetic", 1), ("no-bridge", "synthetic", 1)]
    # The console: one line per finished trial, not Tune's periodic status tables.
    shown = capfd.readouterr().out
    ended = re.findall(r"^trial (\d)/2 done: (\S+)  val/acc50 [0-9.]+  \d+ s$", shown, re.M)
    assert sorted(ended) == [("1", "baseline/synthetic/seed13"),
                             ("2", "no-bridge/synthetic/seed13")] or \
        sorted(ended) == [("1", "no-bridge/synthetic/seed13"),
                          ("2", "baseline/synthetic/seed13")], shown[-2000:]
    assert "Trial status:" not in shown
    assert all(0 <= r["test/acc50"] <= 1 for r in table["rows"])

    # Only validation metrics reached Tune; the test split stayed in the run folders.
    results = tune_results(storage / "mini")
    assert results and not any(k.startswith("test") for r in results for k in r)
    assert {"val/acc50", "global_epoch"} <= set(results[0])

    runs = runs_of(uri, "mini")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.data.tags["variant"] for r in children} == {"baseline", "no-bridge"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["trial_id"] for r in children)
    # The stage cache's count under the table and on the parent run (no shared stage here).
    assert (storage / "mini" / "table.md").read_text().endswith(
        "\nstage cache: 2 of 2 stage-epochs trained, 0 reused\n")
    assert parents[0].data.metrics["stage_epochs_trained"] == 2
    assert parents[0].data.metrics["stage_epochs_without_cache"] == 2

    # The same study into the same storage: no new runs, nothing retrained.
    again = run_study(study, storage, options, log=lambda _m: None)
    assert len(runs_of(uri, "mini")) == 3
    assert [r["test/acc50"] for r in again["rows"]] == [r["test/acc50"] for r in table["rows"]]


@pytest.mark.slow
def test_space_study_with_tpe_and_asha_on_our_epoch_counter(local_ray, synthetic_storage,
                                                            tmp_path):
    path = write_study(tmp_path, synthetic_storage / "data", """
num_samples: 3
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
space:
  hilora.stages.stage0.lr: {choice: [1.0e-3, 1.0e-6]}
  model.bridge.adaptive_weights: {choice: [true, false]}
""", e0=2)
    study = load_study(path)
    storage = tmp_path / "storage"
    uri = f"sqlite:///{storage.resolve()}/mlflow.db"
    table = run_study(study, storage, StudyOptions(name="space", workers_per_trial=0,
                                                   mlflow_uri=uri), log=lambda _m: None)
    results = tune_results(storage / "space")
    trials = {r["trial_id"] for r in results}
    assert len(trials) == 3
    assert not any(k.startswith("test") for r in results for k in r)
    assert max(r["global_epoch"] for r in results) == 2
    # No MLflow run is left RUNNING, early-stopped or not.
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs_of(uri, "space"))
    assert table["rows"]


@pytest.mark.parametrize("script, body, message", [
    ("sweep.py", "base: tiny\nspace:\n  optim.nope: {choice: [1, 2]}\n", "space.optim.nope"),
    ("sweep.py", "base: tiny\nvariants:\n  baseline: {}\n", "run it with pipelines/ablate.py"),
    ("ablate.py", "base: tiny\nspace:\n  optim.weight_decay: {choice: [0.1]}\n",
     "run it with pipelines/sweep.py"),
    ("ablate.py", "base: tiny\nvariants:\n  baseline: {hilora.stages.stage1.rank: 0}\n",
     "rank"),
])
def test_bad_study_files_fail_before_ray_starts(tmp_path, script, body, message):
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text(body)
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "pipelines" / script), str(path),
                             "--storage", str(tmp_path / "s")], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and message in lines[0], result.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_trial_on_its_own_ray_train_worker_reports_through_tune(local_ray, synthetic_storage,
                                                                  tmp_path):
    path = write_study(tmp_path, synthetic_storage / "data", """
resources: {workers: 1, cpus_per_worker: 1}
variants:
  baseline: {}
""")
    storage = tmp_path / "storage"
    table = run_study(load_study(path), storage, StudyOptions(name="train1", mlflow=False),
                      log=lambda _m: None)
    assert [r["variant"] for r in table["rows"]] == ["baseline"] and not table["failed_trials"]
    results = tune_results(storage / "train1")
    assert [r["global_epoch"] for r in results if "global_epoch" in r] == [1]
    assert not any(k.startswith("test") for r in results for k in r)


def test_a_finished_trial_reports_the_study_metric_as_its_run_reached_it(tmp_path):
    """A trial found finished (an earlier invocation, another machine) reports its selected
    checkpoint's value under the study's metric, and its epochs; an unfinished one trains."""
    study = load_study(write_study(tmp_path, tmp_path / "data", """
mode: max
variants:
  baseline: {}
"""))
    folder = RunFolder(tmp_path / "trial")
    folder.prepare("seed: 13\n", resume=False)
    assert finished_result(folder, study) is None
    folder.metrics_path.write_text(json.dumps({"epoch": 1, study.metric: 0.5}) + "\n")
    folder.write_summary({"best": {"stage": "stage0", study.metric: 0.75},
                          study.metric: 0.7, "epochs_trained": 3})
    assert finished_result(folder, study) == {study.metric: 0.75, "global_epoch": 3,
                                              "reused": 1}


def test_a_trial_killed_for_memory_stops_the_study_with_one_line():
    """Ray's memory monitor cannot be made to kill a trial on demand here: the Tuner whose
    fit raises what Tune 2.60 raises then stands in for it."""
    from hivg.errors import UserError
    from hivg.orchestration.tune import fit_tuner

    class KilledForMemory:
        def fit(self):
            raise RuntimeError("Caught unexpected exception: 2 worker(s) were killed due to "
                               "the node running low on memory.\nMemory on the node ...")

    with pytest.raises(UserError, match=r"^study stopped: .* low on memory; .* --resume"):
        fit_tuner(KilledForMemory())

    class Broken:
        def fit(self):
            raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):  # not swallowed
        fit_tuner(Broken())
