"""The driver of one training run: run folder, MLflow run lifecycle, local or Ray Train.

`pipelines/train.py` and every sweep trial call `run_training`. The trainer itself
(`hivg.train.fit`) never learns which of these it is inside.
"""
from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hivg.config import Config
from hivg.errors import UserError
from hivg.orchestration.resources import LOCAL, Resources, check_run_fits
from hivg.run_folder import (CHECKPOINTS, CONFIG, METRICS, PREDICTIONS, SUMMARY, RunFolder,
                              config_digest)
from hivg.train.hooks import NullTracker


@dataclass
class TrackingOptions:
    """MLflow settings; `enabled=False` records nothing (no mlflow import at all)."""

    enabled: bool = True
    uri: str | None = None               # --mlflow-uri (else env, else {storage}/mlflow.db)
    experiment: str | None = None        # default: the run name's first part (the preset)
    log_model: bool = False              # the best checkpoint as an artifact
    parent_run_id: str | None = None     # sweeps nest trials under the study's run
    extra_tags: dict[str, str] = field(default_factory=dict)
    run_key: str | None = None           # what finds the run again (default: its folder)


def mlflow_run_name(config: Config) -> str:
    """Readable from the config, ending in its hash as the run folder's default name does:
    preset/dataset/variant/seedN-HASH6."""
    return (f"{config.preset}/{config.data.dataset}/{config.variant}/seed{config.seed}-"
            f"{config_digest(config)}")


def prepare_remote_run_folder(config: Config, sync, resume: bool) -> None:
    """RunFolder.prepare for S3 storage: the bucket's copy of the run folder is the truth,
    the mirror a cache of it (pulled on resume, cleared for a new run), config.yaml pushed."""
    import shutil

    folder = RunFolder(sync.local)
    if resume:
        sync.pull()
        if not folder.config_path.is_file():
            raise UserError(f"{sync.url}: nothing to resume (no {CONFIG})")
    elif sync.remote_has(METRICS) or sync.remote_has(SUMMARY):
        raise UserError(f"{sync.url}: run folder already holds results; pass --resume or "
                        "choose another --name")
    elif sync.local.exists():
        shutil.rmtree(sync.local)  # left over from a run the bucket no longer holds
    folder.prepare(config.to_yaml(), resume)
    sync.push()


def start_tracker(config: Config, storage: Path, run_dir: Path, options: TrackingOptions,
                  world_size: int, device_type: str, run_url: str | None = None):
    """The MLflow run of `run_dir` (resumed when it already exists: the run folder's name is
    its key), or a NullTracker when tracking is off. `run_url`: the run folder's address
    when it is not a local path (S3 storage)."""
    if not options.enabled:
        return NullTracker(), None
    try:
        from hivg.tracking import MlflowTracker, package_tags, resolve_tracking_uri
    except ImportError:
        raise UserError("MLflow tracking needs the cluster extra: pip install -e '.[cluster]' "
                        "(or pass --no-mlflow)") from None
    from hivg.train.stage_cache import code_fingerprint

    uri = resolve_tracking_uri(options.uri, str(storage))
    experiment = options.experiment or config.preset
    artifacts = None
    if uri.startswith("sqlite:") and "://" not in str(storage):
        artifacts = (Path(storage).resolve() / "mlartifacts").as_uri()
    tags = {
        "dataset": config.data.dataset, "model": config.model.clip, "variant": config.variant,
        "seed": str(config.seed), "preset": config.preset, "world_size": str(world_size),
        "device_type": device_type, "code_fingerprint": code_fingerprint(),
        "starting_weights": config.model.weights or "random init",
        "run_folder": run_url or str(run_dir.resolve()), "host": socket.gethostname(),
        **package_tags(),
        **options.extra_tags,
    }
    tracker = MlflowTracker.start(uri, experiment, run_name=mlflow_run_name(config), tags=tags,
                                  parent_run_id=options.parent_run_id,
                                  run_key=options.run_key or run_url or str(run_dir.resolve()),
                                  artifact_location=artifacts)
    return tracker, uri


def log_run_artifacts(tracker, folder: RunFolder, log_model: bool) -> None:
    for path in (folder.summary_path, folder.config_path, folder.metrics_path):
        if path.is_file():
            tracker.log_artifact(path)
    if folder.predictions.is_dir():
        tracker.log_artifact(folder.predictions, PREDICTIONS)
    if log_model and folder.best_checkpoint.is_file():
        tracker.log_artifact(folder.best_checkpoint, CHECKPOINTS)


def run_training(config: Config, storage: str | Path, run_dir: Path, *, resume: bool = False,
                 tracking: TrackingOptions | None = None, resources: Resources = LOCAL,
                 address: str | None = None, max_failures: int = 0,
                 stage_cache: Any = None, show_progress: bool = True,
                 log: Callable[[str], None] = print, hooks: Any = None,
                 ray_callbacks: list | None = None,
                 fit_fn: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train `config` into `run_dir`, locally or on Ray, tracked in MLflow; return the summary.

    `resources`: LOCAL (workers 0) trains in this process; N workers start a Ray Train worker
    group (joining the cluster at `address`, restarted up to `max_failures` times).
    The MLflow run ends FINISHED, FAILED (an exception) or KILLED (Ctrl-C / SIGTERM).
    `hooks`: TrainHooks for a local run (a Tune trial reports through them);
    `ray_callbacks`: Ray Train callbacks (a Tune trial passes TuneReportCallback).
    `fit_fn`: what trains in this process (default hivg.train.fit.fit, same signature); the
    orchestration-scale benchmark swaps in a no-op body and keeps the rest of the path.

    S3 storage (`s3://bucket/prefix`): `run_dir` must lie in the mirror, `{mirror}/{name}`
    (`name` may have several parts: a study's trials sit in `{study}/trials/{key}`); the run
    folder is pushed to `{storage}/{name}/` after every epoch and at the end (hivg.
    orchestration.remote_storage), and pulled first on resume."""
    sync = _sync_for(storage, run_dir)
    tracking = tracking or TrackingOptions()
    _check_services(storage, resources, address, tracking, log)
    if sync:
        prepare_remote_run_folder(config, sync, resume)
        if resources.on_workers:  # workers on other nodes pull data and weights from the bucket
            from hivg.orchestration.node_inputs import share_inputs

            share_inputs(config, sync.storage, log)
    else:
        RunFolder(Path(run_dir)).prepare(config.to_yaml(), resume)
    device_type = "cuda" if resources.use_gpu or config.device.startswith("cuda") \
        else ("cpu" if config.device == "cpu" or resources.on_workers
              else _local_device_type(config))
    tracker, uri = start_tracker(config, storage, run_dir, tracking, max(resources.workers, 1),
                                 device_type, run_url=sync.url if sync else None)
    if uri:
        from hivg.tracking import redact

        log(f"mlflow: {redact(uri)} (experiment {tracking.experiment or config.preset}, run "
            f"{mlflow_run_name(config)})")
    with _lifecycle(tracker):
        if resources.on_workers:
            from hivg.orchestration import ray_train

            summary = ray_train.train_on_ray(config, run_dir, resources,
                                             max_failures=max_failures,
                                             tracker=tracker if uri else None,
                                             stage_cache=stage_cache,
                                             ray_storage=_ray_storage(storage),
                                             callbacks=ray_callbacks, sync=sync)
        else:
            summary = _train_here(config, run_dir, hooks, tracker, sync, show_progress, log,
                                  stage_cache, fit_fn)
        log_run_artifacts(tracker, RunFolder(Path(run_dir)), tracking.log_model)
    if uri:
        from hivg.tracking import ui_command

        summary["mlflow_ui"] = ui_command(uri)
    return summary


def _sync_for(storage: str | Path, run_dir: Path):
    """The run folder's RunFolderSync with S3 storage (the bucket checked first), else None."""
    from hivg.orchestration.remote_storage import RunFolderSync, open_storage

    remote = open_storage(storage)
    if remote is None:
        return None
    remote.check()  # a bad bucket, endpoint or missing credentials: one line, exit 2
    if remote.mirror not in Path(run_dir).resolve().parents:
        raise ValueError(f"run_dir {run_dir}: with S3 storage it must sit in the mirror "
                         f"{remote.mirror}")
    return RunFolderSync(remote, Path(run_dir).resolve().relative_to(remote.mirror).as_posix())


def _check_services(storage: str | Path, resources: Resources, address: str | None,
                    tracking: TrackingOptions, log: Callable[[str], None]) -> None:
    """Ray (when the run has workers: the cluster holds them and shares the storage) and the
    MLflow server answer, before anything is written."""
    if resources.on_workers:
        import ray

        from hivg.orchestration import ray_train

        address = ray_train.cluster_address(address)
        ray_train.connect(address, num_cpus=None if address else max(2, resources.cpus) + 1,
                          log=log)
        check_run_fits(resources, ray_train.cluster_capacity())
        ray_train.check_shared_storage(storage)
    if tracking.enabled:
        from hivg.tracking import check_reachable, resolve_tracking_uri

        uri = resolve_tracking_uri(tracking.uri, str(storage))
        check_reachable(uri)
        if resources.on_workers:
            from hivg.orchestration import ray_train

            ray_train.check_tracking_uri_for_cluster(uri)


def _train_here(config: Config, run_dir: Path, hooks: Any, tracker, sync, show_progress: bool,
                log: Callable[[str], None], stage_cache: Any,
                fit_fn: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """fit() in this process; with S3 storage the run folder is pushed every epoch and at
    the end."""
    from hivg.orchestration.remote_storage import SyncHooks
    from hivg.train.hooks import TrainHooks

    if fit_fn is None:
        from hivg.train.fit import fit as fit_fn
    if sync:
        hooks = SyncHooks(hooks or TrainHooks(), sync)
    summary = fit_fn(config, run_dir, hooks=hooks, tracker=tracker, resume=True,
                     show_progress=show_progress, log=log, stage_cache=stage_cache)
    if sync:
        sync.push()  # summary, predictions, best.pt
    return summary


def _lifecycle(tracker):
    """FINISHED / FAILED / KILLED for an MLflow run; nothing for the null tracker."""
    if isinstance(tracker, NullTracker):
        return contextlib.nullcontext()
    from hivg.tracking import tracked_run

    return tracked_run(tracker)


def _ray_storage(storage: str | Path) -> str | Path:
    """Ray Train's own state (its pointer checkpoints) next to the runs, never on a worker;
    on S3 Ray writes it there itself (credentials from the environment)."""
    if "://" in str(storage):
        return f"{str(storage).rstrip('/')}/.ray-train"
    return Path(storage).resolve() / ".ray-train"


def _local_device_type(config: Config) -> str:
    import torch

    return "cuda" if config.device == "auto" and torch.cuda.is_available() else "cpu"
