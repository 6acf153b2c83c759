"""MLflow tracker against real MLflow: an SQLite store for most tests, a real `mlflow server`
for one slow test. The rule under test: no run stays RUNNING after its process ends, no
credential reaches the store, and a restarted run does not duplicate itself."""
from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH  # noqa: E402
from tools.processes import free_port  # noqa: E402
from mlflow_server import mlflow_server  # noqa: E402,F401  (fixture)

from hivg.errors import UserError  # noqa: E402
from hivg.tracking import (RUN_KEY_TAG, MlflowTracker, check_reachable, find_run,  # noqa: E402
                           is_secret_key, package_tags, redact, resolve_tracking_uri,
                           sigterm_as_keyboard_interrupt, tracked_run, ui_command)
from hivg.tracking.mlflow_tracker import shareable_uri, shared_uri  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes seconds)."""
    root = tmp_path_factory.mktemp("mlflow-sqlite")
    return SimpleNamespace(uri=f"sqlite:///{root}/store/mlflow.db",
                           artifacts=str(root / "artifacts"))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns


@pytest.fixture
def start(db, request):
    """MlflowTracker.start on the module store, one experiment per test."""
    experiment = re.sub(r"[^\w-]", "_", request.node.name)

    def _start(run_name="run", **kw):
        return MlflowTracker.start(db.uri, experiment, run_name,
                                   artifact_location=db.artifacts, **kw)
    _start.experiment = experiment
    return _start


def _run(tracker):
    return tracker.client.get_run(tracker.run_id)


# -- where runs live ------------------------------------------------------------------------
def test_resolve_tracking_uri(tmp_path, monkeypatch):
    here = tmp_path.resolve()  # the autouse fixture made it the working directory
    local = here / "runs"
    assert resolve_tracking_uri(None, str(local)) == f"sqlite:///{local}/mlflow.db"
    assert resolve_tracking_uri(None, "runs") == f"sqlite:///{local}/mlflow.db"
    assert resolve_tracking_uri(None, f"file://{local}") == f"sqlite:///{local}/mlflow.db"
    assert resolve_tracking_uri(None, "s3://bucket/prefix") == f"sqlite:///{here}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None, "runs") == "http://env:5000"
    assert resolve_tracking_uri("http://cli:5000", "runs") == "http://cli:5000"


def test_ui_command():
    assert ui_command("sqlite:////a/b/mlflow.db") == \
        "mlflow ui --backend-store-uri sqlite:////a/b/mlflow.db"
    assert ui_command("sqlite:////a b/mlflow.db") == \
        "mlflow ui --backend-store-uri 'sqlite:////a b/mlflow.db'"
    assert ui_command("postgresql://me:pw@db/mlflow") == \
        "mlflow ui --backend-store-uri 'postgresql://me:***@db/mlflow'"
    line = ui_command("https://me:pw@mlflow.example.org")
    assert "https://me:***@mlflow.example.org" in line and "pw" not in line


def test_check_reachable_creates_sqlite_folder(tmp_path):
    check_reachable(f"sqlite:///{tmp_path}/a/b/mlflow.db")
    assert (tmp_path / "a" / "b").is_dir()


def test_unreachable_server_is_one_line_user_error_quickly():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(UserError) as info:
        MlflowTracker.start(uri, "e", "r")
    assert time.monotonic() - t0 < 5
    message = str(info.value)
    assert message.startswith(f"MLflow tracking URI {uri} is unreachable: ")
    assert "\n" not in message and "Connection refused" in message


# -- credentials ----------------------------------------------------------------------------
@pytest.mark.parametrize("key, secret", [
    ("password", True), ("db.PASSWORD", True), ("storage.aws_secret_access_key", True),
    ("AWS_ACCESS_KEY_ID", True), ("s3.access_key", True), ("s3.secret_key", True),
    ("secret", True), ("api_key", True), ("openai.apiKey", True), ("token", True),
    ("hf_token", True), ("aws_session_token", True), ("auth/token", True),
    ("gcp.credentials", True), ("secretAccessKey", True), ("kms_key_id", True),
    ("model.context_length", False), ("tokens", False), ("max_tokens", False),
    ("data.token_dropout", False), ("hivg.run_key", False), ("optim.lr", False),
    ("sort_key", False), ("key", False), ("model.text.pad_token_id", False),
    ("tokenizer", False), ("keyframes", False), ("secretary", False), ("", False),
])
def test_is_secret_key(key, secret):
    assert is_secret_key(key) is secret


@pytest.mark.parametrize("value, expected", [
    ("AKIAIOSFODNN7EXAMPLE", "***"),
    ("key=ASIAIOSFODNN7EXAMPLE;", "key=***;"),
    ("s3://me:hunter2@host/bucket", "s3://me:***@host/bucket"),
    ("see http://u:p@a/x and https://v:q@b", "see http://u:***@a/x and https://v:***@b"),
    ("http://host:5000/path", "http://host:5000/path"),
    ("mail me@example.org", "mail me@example.org"),
    ("AKIA-not-a-key", "AKIA-not-a-key"),
    ("http://alice:s%40f3@mlflow.internal:5000", "http://alice:***@mlflow.internal:5000"),
    ("https://:tok@h/api", "https://:***@h/api"),
    ("http://alice@h:5000", "http://alice@h:5000"),  # a user alone is no secret
    ("mlflow: http://u:p@h (experiment x)", "mlflow: http://u:***@h (experiment x)"),
    ("sqlite:////tmp/store/mlflow.db", "sqlite:////tmp/store/mlflow.db"),
])
def test_redact(value, expected):
    assert redact(value) == expected


def without_tracking_uri(monkeypatch):
    """$MLFLOW_TRACKING_URI unset now and as it was after the test, though shareable_uri sets
    it (delenv alone records nothing to restore when it is unset)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")


@pytest.mark.parametrize("uri, travels", [
    ("sqlite:////tmp/store/mlflow.db", "sqlite:////tmp/store/mlflow.db"),
    ("http://10.0.0.5:5000", "http://10.0.0.5:5000"),
    ("http://alice:hunter2@10.0.0.5:5000", "env:MLFLOW_TRACKING_URI"),
    (None, None),
])
def test_a_uri_with_a_password_reaches_workers_through_the_environment(uri, travels,
                                                                       monkeypatch):
    without_tracking_uri(monkeypatch)
    assert shareable_uri(uri) == travels
    assert shared_uri(travels) == uri  # what the worker uses, from its environment
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if travels != uri:  # a node without it: one line, not a connection to nowhere
        with pytest.raises(UserError, match="MLFLOW_TRACKING_URI"):
            shared_uri(travels)


def test_a_pickled_tracker_holds_no_password(start, monkeypatch):
    """What Ray Train workers get: the run, and the URI from their environment."""
    without_tracking_uri(monkeypatch)
    tracker = start()
    tracker.uri = "http://u:hunter2@127.0.0.1:1"  # not contacted: only pickled
    data = pickle.dumps(tracker)
    assert b"hunter2" not in data
    assert pickle.loads(data).uri == tracker.uri


def test_params_drop_secrets_redact_truncate_and_batch(start):
    tracker = start()
    params = {f"p.{i:03d}": i for i in range(250)}  # more than one log_batch may hold
    params.update({"storage.aws_secret_access_key": "s3cr3t", "db.password": "pw",
                   "model.context_length": 77, "tokens": 5, "aws.key": "AKIAIOSFODNN7EXAMPLE",
                   "storage.uri": "s3://me:hunter2@minio/bucket", "long": "x" * 10_000,
                   "none": None, "list": [1, 2]})
    tracker.log_params(params)
    logged = _run(tracker).data.params
    assert "storage.aws_secret_access_key" not in logged and "db.password" not in logged
    assert logged["model.context_length"] == "77" and logged["tokens"] == "5"
    assert logged["aws.key"] == "***" and logged["storage.uri"] == "s3://me:***@minio/bucket"
    assert logged["long"] == "x" * MAX_PARAM_VAL_LENGTH
    assert logged["none"] == "None" and logged["list"] == "[1, 2]"
    assert sum(k.startswith("p.") for k in logged) == 250
    assert not any("s3cr3t" in v or "hunter2" in v for v in logged.values())


def test_tags_drop_secrets(start):
    tracker = start(tags={"team": "vg", "hf_token": "hf_xxx"})
    tracker.set_tags({"note": "http://u:pw@host", "api_key": "k"})
    tags = _run(tracker).data.tags
    assert tags["team"] == "vg" and tags["note"] == "http://u:***@host"
    assert "hf_token" not in tags and "api_key" not in tags


def test_params_relog_same_value_ok_changed_value_names_key(start):
    tracker = start()
    tracker.log_params({"optim.lr": 1e-4, "long": "y" * 7000})
    tracker.log_params({"optim.lr": 1e-4, "long": "y" * 7000, "new": 1})  # a resume
    assert _run(tracker).data.params["new"] == "1"
    with pytest.raises(UserError, match=r"^param optim\.lr: .*'0\.0001'.*'0\.001'"):
        tracker.log_params({"optim.lr": 1e-3})


def test_metrics_steps_and_nan(start):
    tracker = start()
    tracker.log_metrics({"train/loss": 1.5, "val/acc50": 0.25}, step=1)
    tracker.log_metrics({"train/loss": float("nan"), "val/acc50": 0.5}, step=2)
    tracker.flush()  # metrics are written in the background
    history = tracker.client.get_metric_history(tracker.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]
    assert history[0].value == 1.5 and history[1].value != history[1].value  # NaN kept
    assert _run(tracker).data.metrics["val/acc50"] == 0.5


def test_artifacts_file_and_directory(start, tmp_path):
    tracker = start()
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "preds").mkdir()
    (tmp_path / "preds" / "val.parquet").write_bytes(b"x")
    tracker.log_artifact(tmp_path / "summary.json")
    tracker.log_artifact(tmp_path / "preds", "predictions")
    listed = {f.path for f in tracker.client.list_artifacts(tracker.run_id)}
    assert listed == {"summary.json", "predictions"}
    inner = tracker.client.list_artifacts(tracker.run_id, "predictions")
    assert [f.path for f in inner] == ["predictions/val.parquet"]
    with pytest.raises(UserError, match="missing"):
        tracker.log_artifact(tmp_path / "missing")


# -- statuses -------------------------------------------------------------------------------
def test_tracked_run_finished(start):
    tracker = start()
    with tracked_run(tracker) as t:
        t.log_metrics({"m": 1.0}, step=0)
    assert _run(tracker).info.status == "FINISHED"


@pytest.mark.parametrize("error, status", [
    (ValueError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED"),
    (SystemExit(2), "FAILED"), (SystemExit(0), "FINISHED"),
])
def test_tracked_run_statuses_and_reraise(start, error, status):
    tracker = start()
    with pytest.raises(type(error)):
        with tracked_run(tracker):
            raise error
    assert _run(tracker).info.status == status


def test_sigterm_in_block_kills_run_and_handler_is_restored(start):
    tracker = start()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with tracked_run(tracker):
            # Never send SIGTERM to the test process unless our handler is in place.
            assert signal.getsignal(signal.SIGTERM) is not before
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
    assert _run(tracker).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_handler_is_skipped_off_the_main_thread():
    import threading
    seen = []

    def worker():
        with sigterm_as_keyboard_interrupt():
            seen.append(signal.getsignal(signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [before]


SIGTERM_SCRIPT = """
import sys, time
from hivg.tracking import MlflowTracker, tracked_run
tracker = MlflowTracker.start(sys.argv[1], "sigterm", "run", artifact_location=sys.argv[2])
with tracked_run(tracker):
    print(tracker.run_id, flush=True)
    time.sleep(120)
"""


def test_process_terminated_from_outside_leaves_run_killed(db):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, db.uri, db.artifacts],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, cwd=REPO)
    try:
        run_id = process.stdout.readline().strip()
        assert run_id, process.stderr.read()
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert mlflow.MlflowClient(db.uri).get_run(run_id).info.status == "KILLED"


def test_end_is_idempotent_and_checks_status(start):
    tracker = start()
    with pytest.raises(ValueError, match="RUNNING"):
        tracker.end("RUNNING")
    tracker.end("FINISHED")
    end_time = _run(tracker).info.end_time
    tracker.end("FAILED")
    tracker.end("FINISHED")
    run = _run(tracker)
    assert run.info.status == "FINISHED" and run.info.end_time == end_time


# -- run identity ---------------------------------------------------------------------------
def test_run_key_reuses_the_run_instead_of_duplicating(start, db):
    first = start(run_key="storage/a", tags={"attempt": "1"})
    first.log_metrics({"m": 1.0}, step=1)
    first.end("KILLED")
    assert find_run(db.uri, start.experiment, "storage/a") == first.run_id

    again = start(run_key="storage/a", tags={"attempt": "2"})
    assert again.run_id == first.run_id
    run = _run(again)
    assert run.info.status == "RUNNING" and run.data.tags["attempt"] == "2"
    assert run.data.tags[RUN_KEY_TAG] == "storage/a"

    other = start(run_key="storage/b")
    assert other.run_id != first.run_id
    experiment_id = first.client.get_experiment_by_name(start.experiment).experiment_id
    assert len(first.client.search_runs([experiment_id])) == 2


def test_resume_by_run_id_and_nesting(start, db):
    parent = start("parent")
    child = start("child", parent_run_id=parent.run_id)
    assert _run(child).data.tags["mlflow.parentRunId"] == parent.run_id
    child.end("FAILED")
    resumed = MlflowTracker.start(db.uri, "ignored-when-run-id-given", run_id=child.run_id)
    assert resumed.run_id == child.run_id and _run(resumed).info.status == "RUNNING"
    with pytest.raises(UserError, match="cannot be resumed"):
        MlflowTracker.start(db.uri, start.experiment, run_id="0" * 32)


def test_find_run_unknown_experiment_and_bad_key(db, start):
    assert find_run(db.uri, "no-such-experiment", "k") is None
    with pytest.raises(UserError, match="quotes"):
        start(run_key="it's")


def test_trackers_coexist_without_global_state(start):
    a, b = start("a"), start("b")
    a.log_metrics({"m": 1.0}, step=0)
    b.log_metrics({"m": 2.0}, step=0)
    a.flush(), b.flush()
    assert mlflow.active_run() is None
    assert _run(a).data.metrics["m"] == 1.0 and _run(b).data.metrics["m"] == 2.0


def test_pickle_keeps_the_run(start):
    tracker = start()
    copy = pickle.loads(pickle.dumps(tracker))
    copy.log_metrics({"m": 3.0}, step=0)
    copy.flush()
    assert copy.run_id == tracker.run_id and _run(tracker).data.metrics["m"] == 3.0


def test_package_tags():
    tags = package_tags()
    assert __import__("torch").__version__.startswith(tags["hivg.version.torch"])
    assert tags["hivg.version.mlflow"] == mlflow.__version__
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", tags["mlflow.source.git.commit"])
        assert tags["hivg.git_dirty"] in ("true", "false")


# -- a real tracking server -----------------------------------------------------------------
PAUSE_S = 3.0


@pytest.mark.slow
def test_a_paused_server_does_not_slow_log_metrics(mlflow_server):
    """MLflow never gates a trial: metrics go out in the background, so a tracking server
    stopped for seconds (SIGSTOP) does not slow the caller, and after `end` the run holds
    every value, in order."""
    tracker = MlflowTracker.start(mlflow_server.url, "async", run_name="slow-server")
    tracker.log_metrics({"m": 0.0}, step=0)
    tracker.flush()
    group = os.getpgid(mlflow_server.process.pid)  # the server and its workers
    os.killpg(group, signal.SIGSTOP)
    try:
        t = time.perf_counter()
        for step in range(1, 11):  # a trial's ten reports while the server is paused
            tracker.log_metrics({"m": float(step), "loss": 1.0 / step}, step=step)
        logged_in = time.perf_counter() - t
        time.sleep(PAUSE_S)
    finally:
        os.killpg(group, signal.SIGCONT)
    assert logged_in < 0.5, f"log_metrics took {logged_in:.2f} s against a paused server"
    tracker.end("FINISHED")
    history = tracker.client.get_metric_history(tracker.run_id, "m")
    assert [(m.step, m.value) for m in history] == [(s, float(s)) for s in range(11)]
    assert len(tracker.client.get_metric_history(tracker.run_id, "loss")) == 10
    assert tracker.client.get_run(tracker.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_tracking_server_round_trip(mlflow_server, tmp_path):
    uri = mlflow_server.url
    check_reachable(uri)
    (tmp_path / "summary.json").write_text('{"val/acc50": 0.5}')
    tracker = MlflowTracker.start(uri, "server", "run", run_key="k", tags={"team": "vg"})
    with tracked_run(tracker):
        tracker.log_params({"optim.lr": 1e-4, "password": "pw"})
        tracker.log_metrics({"val/acc50": 0.25}, step=1)
        tracker.log_metrics({"val/acc50": 0.5}, step=2)
        tracker.log_artifact(tmp_path / "summary.json", "results")
    assert find_run(uri, "server", "k") == tracker.run_id

    run = mlflow_server.get("/api/2.0/mlflow/runs/get", run_id=tracker.run_id)["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    metrics = {m["key"]: (m["value"], m["step"]) for m in run["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert params == {"optim.lr": "0.0001"}
    assert metrics == {"val/acc50": (0.5, 2)}
    assert tags["team"] == "vg" and tags[RUN_KEY_TAG] == "k"
    assert run["info"]["status"] == "FINISHED"
    files = mlflow_server.get("/api/2.0/mlflow/artifacts/list", run_id=tracker.run_id,
                              path="results")["files"]
    assert [f["path"] for f in files] == ["results/summary.json"]
    assert list((mlflow_server.root / "artifacts").rglob("summary.json"))


def test_local_server_that_cannot_start_fails_with_its_log_in_one_error(tmp_path):
    from tools.mlflow_server import mlflow_server

    with pytest.raises(UserError, match="did not answer") as info:
        with mlflow_server("nosuchscheme://nowhere", tmp_path, timeout=90):
            pass
    assert "nosuchscheme" in str(info.value) and "\n" not in str(info.value)


def test_a_runs_mlflow_name_ends_with_its_folders_config_hash(db, tmp_path):
    """The UI's run list and the storage's folders name a run alike: the same short hash."""
    from hivg.cli import default_run_name
    from hivg.config import load_preset
    from hivg.orchestration.run import TrackingOptions, start_tracker

    config = load_preset("tiny").replace({"variant": "no-bridge", "seed": 7})
    folder = tmp_path / default_run_name(config)  # tiny-synthetic-no-bridge-seed7-HASH6
    tracker, _uri = start_tracker(config, tmp_path, folder,
                                  TrackingOptions(uri=db.uri, experiment="names"), 1, "cpu")
    tracker.end("FINISHED")
    name = _run(tracker).info.run_name
    assert name.startswith("tiny/synthetic/no-bridge/seed7-")
    assert name.rsplit("-", 1)[1] == folder.name.rsplit("-", 1)[1]
    other = config.replace({"optim.weight_decay": 0.5})
    assert default_run_name(other)[-6:] != folder.name[-6:]
