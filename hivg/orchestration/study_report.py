"""A study's report and MLflow: log the report folder to the study's parent run, and the
report at the end of ablate.py / sweep.py (hivg.analysis writes it; this logs it).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Optional

from hivg.analysis import write_report
from hivg.analysis.study import RESULTS
from hivg.errors import UserError

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def report_study(study: str, storage: str | Path, out: str | Path | None = None, *,
                 mlflow_uri: str | None = None, mlflow: bool = True, n_boot: int = 2000,
                 seed: int = 0, plots: bool = True) -> Path:
    """pipelines/report.py: the report of `study` (a study name under `storage`, or the id
    of its MLflow parent run), printed and logged to that run; returns the report folder.
    With S3 storage the study's results are pulled into the mirror and the report pushed."""
    from hivg.orchestration.remote_storage import open_storage

    if n_boot < 100:
        raise UserError(f"--n-boot {n_boot}: expected at least 100 resamples")
    remote = open_storage(storage)
    if remote is not None:
        remote.check()
        storage = remote.mirror
        _pull_study(remote, storage, study)
    storage = Path(storage)
    uri = _tracking_uri(mlflow_uri, storage) if mlflow else None
    name = study
    if not (storage / name / RESULTS).is_file() and _RUN_ID.match(name) and uri:
        name = study_name_of_run(uri, name)
        if name is None:
            raise UserError(f"{study}: neither a study under {storage} nor a study's MLflow "
                            f"parent run at {uri}")
    out_dir = write_report(storage, name, out, n_boot=n_boot, seed=seed, plots=plots)
    print((out_dir / "table.md").read_text())
    files = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    print(f"report: {out_dir / 'report.md'}")
    print(f"files:  {', '.join(files)}")
    if remote is not None and out is None:
        from hivg.orchestration.tune import push_study_files

        push_study_files(remote, storage, name, report_only=True)
        print(f"pushed to {remote.url(name)}/report")
    if uri:
        run_id = log_report_to_study_run(out_dir, uri, name)
        if run_id:
            print(f"logged to MLflow run {run_id} (artifacts: report/) at {uri}")
        else:
            print(f"no MLflow parent run for study {name} at {uri}; not logged")
    return out_dir


def _pull_study(remote, mirror: Path, name: str) -> None:
    """The study's own files and its trials' results, from the bucket into the mirror."""
    from hivg.orchestration.tune import pull_trial_results

    sizes = remote.sizes(name)
    if not sizes:
        raise UserError(f"{name}: no study at {remote.url(name)}")
    for rel in sizes:
        if "/" not in rel:
            remote.download(f"{name}/{rel}", mirror / name / rel)
    pull_trial_results(remote, mirror, name)


def _tracking_uri(cli_uri: str | None, storage: Path) -> str | None:
    """An explicit URI or $MLFLOW_TRACKING_URI; else the storage's SQLite store, only when it
    exists (a report never creates an empty tracking store)."""
    if cli_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return cli_uri or os.environ["MLFLOW_TRACKING_URI"]
    db = storage / "mlflow.db"
    return f"sqlite:///{db.resolve()}" if db.is_file() else None


def log_report(tracker: Any, report_dir: str | Path, artifact_path: str = "report") -> None:
    """Log the report folder to a run: `tracker` is anything with log_artifact(path,
    artifact_path) (hivg.tracking.MlflowTracker: a folder's files go under artifact_path)."""
    report_dir = Path(report_dir)
    if not report_dir.is_dir():
        raise UserError(f"{report_dir}: no report folder to log")
    tracker.log_artifact(report_dir, artifact_path)


def study_run_id(tracking_uri: str, study_name: str) -> Optional[str]:
    """The MLflow parent run of a study (run_study tags it `hivg.run_key=study:NAME`)."""
    from hivg.tracking import find_run

    return find_run(tracking_uri, study_name, f"study:{study_name}")


def study_name_of_run(tracking_uri: str, run_id: str) -> Optional[str]:
    """The study a parent run id belongs to (its `study` tag), or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException:
        return None
    return run.data.tags.get("study")


def log_report_to_study_run(report_dir: str | Path, tracking_uri: str,
                            study_name: str) -> Optional[str]:
    """Log the report folder to the study's parent run; its id, or None without one."""
    run_id = study_run_id(tracking_uri, study_name)
    if run_id is None:
        return None
    from mlflow import MlflowClient

    from hivg.tracking import MlflowTracker

    log_report(MlflowTracker(MlflowClient(tracking_uri=tracking_uri), tracking_uri, run_id),
               report_dir)
    return run_id


def report_after_study(table: dict[str, Any], storage: str | Path,
                       log: Callable[[str], None] = print) -> Optional[Path]:
    """End of ablate.py / sweep.py: write the report and say where it is; log it to the
    parent run when `table` carries `mlflow_uri`. A failure here is a warning: the study's
    results are already safe."""
    name = table["study"]
    try:
        out = write_report(storage, name)
    except Exception as e:  # noqa: BLE001 - the study itself succeeded
        log(f"warning: no report ({type(e).__name__}: {e}); retry with "
            f"python pipelines/report.py {name} --storage {storage}")
        return None
    log(f"report: {out / 'report.md'} (table.csv, table.tex, plots)")
    uri = table.get("mlflow_uri")
    if uri:
        try:
            run_id = log_report_to_study_run(out, uri, name)
            if run_id:
                log(f"report logged to MLflow run {run_id} (artifacts/report)")
        except Exception as e:  # noqa: BLE001
            log(f"warning: report not logged to MLflow ({type(e).__name__}: {e})")
    return out
