"""A study's driver SIGKILLed mid-study, then `--resume`d from another machine (an empty mirror
at another path): real moto_server S3, a real local Ray (the pipeline's own), sqlite MLflow.

Finished trials are not trained again, the trial that was mid-epoch continues from its last
epoch checkpoint, MLflow ends with one parent and one child per trial (none RUNNING, the
resume tagged on the parent), and the secret key is found nowhere in what was written. The
same for a TPE search with ASHA: the searcher goes on from its history (the trials it had
sampled keep their values; no extra trial), the scheduler from its state."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from s3_server import ACCESS_KEY, SECRET_KEY

pytest_plugins = ["s3_server"]  # the s3 and s3_server fixtures
from mlflow_server import running_mlflow_server  # noqa: E402
from tools.processes import kill_processes_naming  # noqa: E402
REPO = Path(__file__).resolve().parents[1]
# Short trials (tiny model, a few samples, stage 0 only): both studies below share them.
SHORT_TRIALS = """overrides:
  data.max_train_samples: 32
  data.max_eval_samples: 20
  data.num_workers: 0
  model.weights: random
  hilora.stages.stage0.epochs: {epochs}
  hilora.stages.stage0.batch_size: 8
  hilora.stages.stage1.epochs: 0
  hilora.stages.stage2.epochs: 0
"""
STUDY = """name: kr
base: tiny
datasets: [synthetic]
seeds: [13]
resources: {{workers: 0, cpus_per_worker: 1}}
""" + SHORT_TRIALS + """variants:
  baseline: {{}}
  no-bridge: {{model.bridge.enabled: false}}
"""
EPOCHS = 3
# The tracking URI carries a password: shown redacted, and found in nothing written.
URI_PASSWORD = "hivg-uri-password-" + SECRET_KEY[-8:]


@pytest.fixture
def mlflow_server(tmp_path_factory):
    """A tracking server given time to start on a busy machine."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), timeout=240) as server:
        yield server


def trained_epochs(text: str) -> list[int]:
    return [m["epoch"] for m in map(json.loads, filter(str.strip, text.splitlines()))
            if "train/loss" in m]


def trial_state(s3, prefix: str) -> tuple[set[str], dict[str, int]]:
    """(trials whose summary.json is in the bucket, epochs trained (with a checkpoint in
    the bucket) by the trials not finished)."""
    keys = s3.keys(prefix)
    finished = {k.split("/")[-2] for k in keys if k.endswith("/summary.json")}
    epochs = {}
    for k in keys:
        trial = k.split("/")[-2]
        if k.endswith("/metrics.jsonl") and trial not in finished and \
                f"{prefix}{trial}/checkpoints/last.pt" in keys:
            epochs[trial] = len(trained_epochs(s3.read(k).decode()))
    return finished, epochs


@pytest.mark.slow
def test_a_driver_killed_mid_study_resumes_from_another_machine(s3, mlflow_server,
                                                                 synthetic_storage, tmp_path,
                                                                 request):
    import mlflow

    study = tmp_path / "kr.yaml"
    study.write_text(STUDY.format(epochs=EPOCHS))
    storage = f"s3://{s3.bucket}/studies"
    # A server that asks for no password ignores the one in the URI; it must not spread.
    uri = mlflow_server.url.replace("://", f"://hivg:{URI_PASSWORD}@")
    # The first machine holds the (small) synthetic data; the second gets it from the bucket.
    shutil.copytree(synthetic_storage / "data",
                    tmp_path / "machine-1" / s3.bucket / "studies" / "data")
    trials = "studies/kr/trials/"
    ray_dirs, outputs = [], []
    request.addfinalizer(lambda: [shutil.rmtree(d, ignore_errors=True) for d in ray_dirs])

    def start(mirror: str, *flags: str, **kw) -> tuple[subprocess.Popen, Path]:
        ray_tmp = Path(tempfile.mkdtemp(prefix="hivg-kr-", dir="/tmp"))  # AF_UNIX path limit
        ray_dirs.append(ray_tmp)
        out = open(tmp_path / f"{mirror}.{len(ray_dirs)}.out", "w")
        err = open(tmp_path / f"{mirror}.{len(ray_dirs)}.err", "w")
        outputs.extend([Path(out.name), Path(err.name)])
        process = subprocess.Popen(
            [sys.executable, str(REPO / "pipelines" / "ablate.py"), str(study),
             "--storage", storage, "--mlflow-uri", uri, "--max-concurrent", "1", *flags],
            stdout=out, stderr=err, cwd=tmp_path, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(ray_tmp),
                 "HIVG_MIRROR_DIR": str(tmp_path / mirror)})
        return process, ray_tmp

    first, ray_tmp = start("machine-1")
    try:
        deadline = time.time() + 400
        while True:  # one trial finished, the other past its first epoch
            finished, epochs = trial_state(s3, trials)
            if len(finished) >= 1 and any(1 <= n < EPOCHS for n in epochs.values()):
                break
            assert first.poll() is None, Path(outputs[1]).read_text()[-3000:]
            assert time.time() < deadline, "the study did not get far enough"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        kill_processes_naming(ray_tmp)
    finished, epochs = trial_state(s3, trials)
    assert len(finished) == 1, (finished, epochs)
    (interrupted, at_epoch), = ((t, n) for t, n in epochs.items() if n < EPOCHS)
    summaries = {t: s3.read(f"{trials}{t}/summary.json") for t in finished}

    second, ray_tmp2 = start("machine-2", "--resume")
    try:
        second.wait(400)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
        kill_processes_naming(ray_tmp2)
    out, err = outputs[2].read_text(), outputs[3].read_text()
    assert second.returncode == 0, err[-3000:]

    # Finished trials were not trained again; the interrupted one went on from its checkpoint.
    for t, summary in summaries.items():
        assert s3.read(f"{trials}{t}/summary.json") == summary, t
        assert f"resuming {t} " not in out
    resumed = re.findall(rf"resuming {re.escape(interrupted)} at stage0 after epoch (\d+)", out)
    assert resumed and int(resumed[0]) >= at_epoch, out[-3000:]
    epochs = trained_epochs(s3.read(f"{trials}{interrupted}/metrics.jsonl").decode())
    assert epochs == list(range(1, EPOCHS + 1))  # each epoch once: none trained twice
    results = json.loads(s3.read("studies/kr/results.json"))
    assert [r["variant"] for r in results["rows"]] == ["baseline", "no-bridge"]

    # MLflow: the same runs continued.
    client = mlflow.MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("kr")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2, [r.info.run_name for r in runs]
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    assert parents[0].data.tags.get("hivg.resumed") == "1"
    # The same trial keys across machines: the run key names no folder.
    assert all(r.data.tags["hivg.run_key"].startswith("trial:kr/") for r in children)
    shown = out + err + outputs[0].read_text() + outputs[1].read_text()
    assert "hivg:***@" in shown and URI_PASSWORD not in shown

    # The secret key and the URI's password are nowhere: bucket, mirrors, MLflow's database
    # and artifacts, Ray's session logs, the output.
    secrets = [ACCESS_KEY.encode(), SECRET_KEY.encode(), URI_PASSWORD.encode()]
    for key in s3.keys(""):
        assert not any(s in s3.read(key) for s in secrets), key
    places = [tmp_path, mlflow_server.root, *ray_dirs]
    for place in places:
        for path in Path(place).rglob("*"):
            if path.is_file() and not path.is_symlink() and path != study:
                data = path.read_bytes()
                assert not any(s in data for s in secrets), path


SPACE_STUDY = """name: krs
base: tiny
datasets: [synthetic]
seeds: [13]
num_samples: 3
resources: {{workers: 0, cpus_per_worker: 1}}
scheduler: {{type: asha, grace_period: 1, reduction_factor: 3}}
""" + SHORT_TRIALS + """space:
  optim.weight_decay: {{uniform: [0.0, 0.1]}}
"""


def sampled(s3, trials: str, names) -> dict[str, float]:
    """The weight decay each trial was started with (its config.yaml in the bucket)."""
    import yaml

    return {t: yaml.safe_load(s3.read(f"{trials}{t}/config.yaml"))["optim"]["weight_decay"]
            for t in names}


@pytest.mark.slow
def test_a_driver_killed_mid_search_resumes_with_its_searchers_history(s3, synthetic_storage,
                                                                       tmp_path, request):
    import mlflow

    from hivg.orchestration.search_space import load_study
    from hivg.orchestration.tune import StudyOptions, _optuna, restore_searcher

    study = tmp_path / "krs.yaml"
    study.write_text(SPACE_STUDY.format(epochs=EPOCHS))
    storage = f"s3://{s3.bucket}/studies"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shutil.copytree(synthetic_storage / "data",
                    tmp_path / "machine-1" / s3.bucket / "studies" / "data")
    trials = "studies/krs/trials/"
    ray_dirs: list[Path] = []
    request.addfinalizer(lambda: [shutil.rmtree(d, ignore_errors=True) for d in ray_dirs])

    def start(mirror: str, *flags: str) -> tuple[subprocess.Popen, Path, Path]:
        ray_tmp = Path(tempfile.mkdtemp(prefix="hivg-krs-", dir="/tmp"))
        ray_dirs.append(ray_tmp)
        out = tmp_path / f"{mirror}.out"
        process = subprocess.Popen(
            [sys.executable, str(REPO / "pipelines" / "sweep.py"), str(study), "--storage",
             storage, "--mlflow-uri", uri, "--max-concurrent", "1", *flags],
            stdout=open(out, "w"), stderr=subprocess.STDOUT, cwd=tmp_path,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(ray_tmp),
                 "HIVG_MIRROR_DIR": str(tmp_path / mirror)})
        return process, ray_tmp, out

    first, ray_tmp, out1 = start("machine-1")
    try:
        deadline = time.time() + 400
        while True:  # one trial finished, the next past its first epoch
            finished, epochs = trial_state(s3, trials)
            if len(finished) >= 1 and any(1 <= n < EPOCHS for n in epochs.values()):
                break
            assert first.poll() is None, out1.read_text()[-3000:]
            assert time.time() < deadline, "the search did not get far enough"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        kill_processes_naming(ray_tmp)
    finished, epochs = trial_state(s3, trials)
    (interrupted, at_epoch), = ((t, n) for t, n in epochs.items() if n < EPOCHS)
    before = sampled(s3, trials, [*finished, interrupted])
    summaries = {t: s3.read(f"{trials}{t}/summary.json") for t in finished}

    second, ray_tmp2, out2 = start("machine-2", "--resume")
    try:
        second.wait(400)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
        kill_processes_naming(ray_tmp2)
    out = out2.read_text()
    assert second.returncode == 0, out[-3000:]

    # The trials sampled before the kill kept their values; one more was sampled, no more.
    names = sorted({k.split("/")[-2] for k in s3.keys(trials) if k.endswith("/config.yaml")})
    assert len(names) == 3, names
    after = sampled(s3, trials, names)
    assert {t: after[t] for t in before} == before
    for t, summary in summaries.items():  # finished: not trained again
        assert s3.read(f"{trials}{t}/summary.json") == summary, t
        assert f"resuming {t} " not in out
    resumed = re.findall(rf"resuming {re.escape(interrupted)} at stage0 after epoch (\d+)", out)
    assert resumed and int(resumed[0]) >= at_epoch, out[-3000:]
    trained = trained_epochs(s3.read(f"{trials}{interrupted}/metrics.jsonl").decode())
    assert len(trained) == len(set(trained)) and trained[:at_epoch] == list(
        range(1, at_epoch + 1))  # none trained twice (ASHA may stop it before the end)

    # The searcher's saved history: the three trials, the first ones with their values.
    run = "search-synthetic"
    local = tmp_path / "searcher"
    for key in s3.keys(f"studies/krs/tune/{run}/"):
        name = key.removeprefix(f"studies/krs/tune/{run}/")
        if name and "/" not in name:  # the run's own files (not its folder marker or trials)
            path = local / "krs" / "tune" / run / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(s3.read(key))
    searcher = _optuna(load_study(study), "synthetic", StudyOptions())
    assert restore_searcher(searcher, local, None, "krs", run) == 3
    history = sorted(t.params["optim.weight_decay"] for t in searcher._ot_study.trials)
    assert sorted(after.values()) == pytest.approx(history)

    # MLflow: one parent, one child per trial, none left RUNNING, the resume on the parent.
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("krs").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) - len(children) == 1 and len(children) == 3, \
        [r.info.run_name for r in runs]
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    assert any(r.data.tags.get("hivg.resumed") == "1" for r in runs
               if "mlflow.parentRunId" not in r.data.tags)
