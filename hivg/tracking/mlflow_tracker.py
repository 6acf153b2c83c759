"""MLflow implementation of the trainer's `Tracker` (rank 0 only).

Everything goes through an explicit `mlflow.MlflowClient` bound to one tracking URI and one
run id, never through MLflow's fluent API (`mlflow.start_run`, the global active run): several
trackers can then live in one process (a sweep driver, tests) and nothing global leaks.

Typical use (a pipeline)::

    uri = resolve_tracking_uri(args.mlflow_uri, args.storage)
    tracker = MlflowTracker.start(uri, "hivg", name, tags=package_tags(), run_key=key)
    with tracked_run(tracker):
        fit(config, run_dir, tracker=tracker, resume=args.resume)
    print(ui_command(uri))
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH,
                                     MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH)

from hivg.errors import UserError

# MLflow's INFO lines (creating database tables, ...) are noise in a pipeline's output.
for _name in ("mlflow", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# MLflow's own "View run at URL" lines show the URI as given, password and all; the pipelines
# print their own line, redacted (ui_command).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

RUN_KEY_TAG = "hivg.run_key"
PARENT_RUN_TAG = "mlflow.parentRunId"  # what the MLflow UI nests child runs by
END_STATUSES = ("FINISHED", "FAILED", "KILLED")
REACHABLE_TIMEOUT_S = 5.0


# -- where the runs live ------------------------------------------------------------------
def resolve_tracking_uri(cli_uri: str | None, storage: str) -> str:
    """`--mlflow-uri`, else $MLFLOW_TRACKING_URI, else an SQLite file beside the runs.

    A remote storage (`s3://...`) cannot hold an SQLite file, so then it is `mlflow.db` in the
    working directory (MLflow's own default location).
    """
    if cli_uri:
        return cli_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    storage = str(storage)
    if storage.startswith("file://"):
        storage = unquote(storage[len("file://"):])
    elif "://" in storage:
        return f"sqlite:///{Path.cwd().resolve()}/mlflow.db"
    return f"sqlite:///{Path(storage).expanduser().resolve()}/mlflow.db"


def ui_command(uri: str) -> str:
    """The line a pipeline prints so the user can look at its runs.

    A tracking server already serves the UI, so for http(s) it is the address to open.
    Passwords in the URI are masked: the line ends up in logs.
    """
    if _is_http(uri):
        return f"open {redact(uri)} in a browser (the MLflow tracking server serves the UI)"
    return f"mlflow ui --backend-store-uri {shlex.quote(redact(uri))}"


def check_reachable(uri: str, timeout: float = REACHABLE_TIMEOUT_S) -> None:
    """Fail fast with one line when a tracking server does not answer.

    Without this, MLflow's client retries with backoff for minutes before the first
    log call fails, mid-run. For SQLite, the database's folder is created instead.
    """
    if uri.startswith("sqlite:///"):
        path = unquote(uri[len("sqlite:///"):].split("?", 1)[0])
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return
    if not _is_http(uri):
        return
    # MLflow's own request helper: honours MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN and the
    # TLS settings (MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_SERVER_CERT_PATH).
    from mlflow.tracking._tracking_service.utils import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    endpoint = "/api/2.0/mlflow/experiments/search"
    try:
        response = http_request(get_default_host_creds(uri), endpoint, "GET", max_retries=0,
                                backoff_factor=0, timeout=timeout, params={"max_results": 1})
    except Exception as e:  # noqa: BLE001 - any failure to connect is the user's to fix
        raise UserError(f"MLflow tracking URI {redact(uri)} is unreachable: "
                        f"{_short_reason(str(e), timeout)}") from None
    if response.status_code != 200:
        hint = {401: " (check MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN)",
                403: " (check MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN)",
                404: " (not an MLflow tracking server?)"}.get(response.status_code, "")
        raise UserError(f"MLflow tracking URI {redact(uri)} is unreachable: HTTP "
                        f"{response.status_code} from {endpoint}{hint}")


def _is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def _short_reason(text: str, timeout: float) -> str:
    """The useful part of a requests/urllib3 error chain, on one line."""
    errno = re.findall(r"\[Errno -?\d+\][^\"')\]]*", text)
    if errno:
        return errno[-1].strip()
    if "timed out" in text.lower() or "timeout" in text.lower():
        return f"no answer within {timeout:g} s"
    return " ".join(text.split())[:200]


# -- keeping credentials out of the tracking store ----------------------------------------
_SECRET_WORDS = {"secret", "secrets", "password", "passwd", "passphrase", "credential",
                 "credentials", "apikey"}
_SECRET_PAIRS = {("access", "key"), ("secret", "key"), ("api", "key"), ("private", "key"),
                 ("key", "id")}
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")


def is_secret_key(key: str) -> bool:
    """Whether a (dotted) param/tag name names a credential.

    Only the last component counts, split into words (snake, kebab or camel case), and whole
    words are compared: `aws_secret_access_key`, `api_key`, `hf_token`, `session_token`,
    `password` are secrets; `tokens`, `max_tokens`, `context_length`, `run_key` are not.
    """
    last = re.split(r"[./]", key)[-1]
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", last).lower()
    words = [w for w in re.split(r"[_\-\s]+", words) if w]
    if not words:
        return False
    if _SECRET_WORDS & set(words) or words[-1] == "token":
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(words, words[1:]))


def redact(value: str) -> str:
    """Mask AWS access key ids and the password of `scheme://user:password@host` URLs."""
    value = _AWS_KEY_ID.sub("***", value)
    return _URL_PASSWORD.sub(r"\1:***@", value)


URI_FROM_ENV = "env:MLFLOW_TRACKING_URI"  # what travels to workers instead of a password


def shareable_uri(uri: str | None) -> str | None:
    """The tracking URI as it may be pickled to Ray workers: itself, or, when it holds a
    password, a pointer to $MLFLOW_TRACKING_URI, set to it here (a local Ray's workers inherit
    this process's environment; a cluster's nodes get it from cluster.yaml). A password never
    travels in pickled arguments or Tune's saved state."""
    if uri is None or uri == URI_FROM_ENV or redact(uri) == uri:
        return uri
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return URI_FROM_ENV


def shared_uri(value: str | None) -> str | None:
    """The tracking URI `shareable_uri` made `value` from, on the node that uses it."""
    if value != URI_FROM_ENV:
        return value
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UserError("the MLflow tracking URI holds a password, so it reaches workers only "
                        "through MLFLOW_TRACKING_URI, which this node lacks: set it there")
    return uri


def _clean(items: dict[str, Any], limit: int) -> dict[str, str]:
    """Drop credential keys; stringify, redact and truncate values to MLflow's limit."""
    return {str(k): redact(str(v))[:limit] for k, v in items.items()
            if not is_secret_key(str(k))}


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# -- metrics off the caller's path --------------------------------------------------------
class _MetricWriter:
    """A run's metrics written by a background thread, so a slow or paused tracking server
    never holds up the training loop (or a Tune trial's report). Whatever is queued when the
    thread wakes goes out as one log_batch per MAX_METRICS_PER_BATCH, in order; `flush` waits
    for all of it and re-raises the first error the thread met."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"mlflow-metrics-{run_id[:8]}",
                                        daemon=True)
        self._thread.start()

    def put(self, metrics: list[Metric]) -> None:
        self._queue.put(metrics)

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while True:  # everything queued meanwhile goes in the same batches
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in items
            batch = [m for item in items if item for m in item]
            try:
                if self._error is None:
                    for chunk in _chunks(batch, MAX_METRICS_PER_BATCH):
                        self.client.log_batch(self.run_id, metrics=chunk)
            except BaseException as e:  # noqa: BLE001 - raised again by flush()
                self._error = e
            finally:
                for _ in items:
                    self._queue.task_done()
            if stop:
                return

    def flush(self) -> None:
        self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Flush and stop the thread."""
        self._queue.put(None)
        self._thread.join()
        self.flush()


# -- the tracker --------------------------------------------------------------------------
class MlflowTracker:
    """One MLflow run. Construct it with `MlflowTracker.start`.

    Metrics are written in the background (see `_MetricWriter`); `flush` waits for them, and
    `end` flushes before the run ends, so the run holds every value once it has ended."""

    def __init__(self, client: MlflowClient, uri: str, run_id: str) -> None:
        self.client, self.uri, self.run_id = client, uri, run_id
        self._ended = False
        self._writer: _MetricWriter | None = None
        # Params this tracker logged into a run it created (None: ask the store, the run may
        # hold params from an earlier process): saves a get_run per log_params.
        self._params: dict[str, str] | None = None

    @classmethod
    def start(cls, uri: str, experiment: str, run_name: str | None = None,
              tags: dict[str, Any] | None = None, run_id: str | None = None,
              parent_run_id: str | None = None, run_key: str | None = None,
              artifact_location: str | None = None) -> MlflowTracker:
        """Create a run, or resume one and mark it RUNNING again.

        The run resumed is `run_id` when given, else the run of `experiment` tagged with
        `run_key` (so restarting an interrupted run does not duplicate it). A new run gets the
        `run_key` tag and, with `parent_run_id`, is nested under that run. `artifact_location`
        only applies when the experiment is created (None: MLflow's default).
        """
        check_reachable(uri)
        client = MlflowClient(tracking_uri=uri)
        tags = dict(tags or {})
        if run_id is None:
            experiment_id = _experiment_id(client, experiment, artifact_location)
            if run_key is not None:
                run_id = _find_run(client, experiment_id, run_key)
        if run_id is not None:
            try:
                client.update_run(run_id, status="RUNNING")
            except MlflowException as e:
                raise UserError(f"MLflow run {run_id} at {redact(uri)} cannot be resumed: "
                                f"{e.message.splitlines()[0] if e.message else e}") from None
            tracker = cls(client, uri, run_id)
            tracker.set_tags(tags)
            return tracker
        if run_key is not None:
            tags[RUN_KEY_TAG] = run_key
        if parent_run_id is not None:
            tags[PARENT_RUN_TAG] = parent_run_id
        run = client.create_run(experiment_id, tags=_clean(tags, MAX_TAG_VAL_LENGTH),
                                run_name=run_name)
        tracker = cls(client, uri, run.info.run_id)
        tracker._params = {}
        return tracker

    # Pickling sends (uri, run_id) only, so a Ray worker can log into a driver-made run.
    def __getstate__(self) -> dict[str, Any]:
        self.flush()  # the copy may log next: this process's metrics go first
        return {"uri": shareable_uri(self.uri), "run_id": self.run_id, "ended": self._ended}

    def __setstate__(self, state: dict[str, Any]) -> None:
        uri = shared_uri(state["uri"])
        self.__init__(MlflowClient(tracking_uri=uri), uri, state["run_id"])
        self._ended = state["ended"]

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params once; re-logging the same value (a resumed run) is a no-op.

        MLflow refuses to change a logged param, so a changed value is a UserError naming
        the key instead of an MLflow error mid-run.
        """
        new = _clean(params, MAX_PARAM_VAL_LENGTH)
        logged = self._params if self._params is not None else \
            self.client.get_run(self.run_id).data.params
        changed = [k for k, v in new.items() if k in logged and logged[k] != v]
        if changed:
            k = changed[0]
            raise UserError(f"param {k}: MLflow run {self.run_id} already logged "
                            f"{_short(logged[k])}, now {_short(new[k])} (MLflow params "
                            f"cannot change; start a new run)")
        todo = [Param(k, v) for k, v in new.items() if k not in logged]
        for chunk in _chunks(todo, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)
            if self._params is not None:
                self._params.update((p.key, p.value) for p in chunk)

    def set_tags(self, tags: dict[str, Any]) -> None:
        items = [RunTag(k, v) for k, v in _clean(tags, MAX_TAG_VAL_LENGTH).items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log as given: NaN/inf are valid MLflow values (the caller decides what to send)."""
        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, int(step)) for k, v in metrics.items()]
        if not items:
            return
        if self._writer is None:
            self._writer = _MetricWriter(self.client, self.run_id)
        self._writer.put(items)

    def flush(self) -> None:
        """Wait until every metric logged so far is in the tracking store."""
        if self._writer is not None:
            self._writer.flush()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a directory's contents, under `artifact_path`."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        else:
            raise UserError(f"{path}: no such file or directory to log as an MLflow artifact")

    def end(self, status: str = "FINISHED") -> None:
        """Terminate the run with `status`; later calls do nothing."""
        if status not in END_STATUSES:
            raise ValueError(f"status: expected one of {', '.join(END_STATUSES)}, got {status!r}")
        if self._ended:
            return
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()
        finally:
            self.client.set_terminated(self.run_id, status)
            self._ended = True


def _short(value: str, n: int = 60) -> str:
    return repr(value if len(value) <= n else value[:n] + "...")


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment's id, creating it when missing (tolerates a concurrent creator)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            # The kind tag makes the UI open the experiment on its runs table (MLflow 3 shows a
            # GenAI overview for experiments without it).
            return client.create_experiment(name, artifact_location=artifact_location,
                                            tags={"mlflow.experimentKind":
                                                  "custom_model_development"})
        except MlflowException:
            exp = client.get_experiment_by_name(name)  # another trial created it meanwhile
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise UserError(f"MLflow experiment {name!r} is deleted; restore it "
                        f"(mlflow experiments restore --experiment-id {exp.experiment_id}) "
                        "or choose another experiment name")
    return exp.experiment_id


def _find_run(client: MlflowClient, experiment_id: str, run_key: str) -> str | None:
    if "'" in run_key or "\\" in run_key:
        raise UserError(f"MLflow run key {run_key!r}: quotes and backslashes are not allowed")
    runs = client.search_runs([experiment_id], f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def find_run(uri: str, experiment: str, run_key: str) -> str | None:
    """Id of the (newest, not deleted) run of `experiment` tagged `hivg.run_key=run_key`."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        return None
    return _find_run(client, exp.experiment_id, run_key)


# -- never leave a run RUNNING ------------------------------------------------------------
@contextlib.contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so `finally`/`except` blocks run.

    Only possible in the main thread (Python delivers signals there); elsewhere it does
    nothing. The previous handler is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        # None: a handler installed from C; SIG_DFL is the closest we can restore.
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def tracked_run(tracker: Any) -> Iterator[Any]:
    """End `tracker` with the block's outcome and re-raise any exception.

    Normal exit (or `sys.exit(0)`) -> FINISHED; KeyboardInterrupt or SIGTERM -> KILLED; any
    other exception -> FAILED. If ending the run fails while an exception is propagating,
    the failure is reported on stderr and the original exception wins.
    """
    with sigterm_as_keyboard_interrupt():
        try:
            yield tracker
        except KeyboardInterrupt:
            _end_quietly(tracker, "KILLED")
            raise
        except SystemExit as e:
            _end_quietly(tracker, "FINISHED" if e.code in (0, None) else "FAILED")
            raise
        except BaseException:
            _end_quietly(tracker, "FAILED")
            raise
    tracker.end("FINISHED")


def _end_quietly(tracker: Any, status: str) -> None:
    try:
        tracker.end(status)
    except Exception as e:  # noqa: BLE001 - the exception already propagating matters more
        print(f"warning: could not mark the MLflow run {status}: {e}", file=sys.stderr)


# -- provenance ---------------------------------------------------------------------------
_VERSIONED = {"torch": "torch", "open_clip": "open_clip_torch", "peft": "peft",
              "hivg": "hivg", "ray": "ray", "mlflow": "mlflow"}


def package_tags() -> dict[str, str]:
    """Versions of the packages that shape results, and the git commit of this code (once
    per process, like hivg.train.stage_cache.code_fingerprint: a reused Tune trial process
    would otherwise run two git commands per trial)."""
    return dict(_package_tags())


@functools.lru_cache(maxsize=1)
def _package_tags() -> dict[str, str]:
    tags: dict[str, str] = {}
    for name, dist in _VERSIONED.items():
        try:
            tags[f"hivg.version.{name}"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    package_dir = Path(__file__).resolve().parents[1]
    commit = _git(package_dir, "rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit  # the key the MLflow UI displays
        status = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
        if status is not None:
            tags["hivg.git_dirty"] = "true" if status else "false"
    return tags


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


__all__ = ["MlflowTracker", "resolve_tracking_uri", "ui_command", "check_reachable",
           "find_run", "tracked_run", "sigterm_as_keyboard_interrupt", "package_tags",
           "is_secret_key", "redact", "RUN_KEY_TAG", "shareable_uri", "shared_uri"]
