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


@dataclass
class DistributedOptions:
    """None workers = a plain local run in this process."""

    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    address: str | None = None
    max_failures: int = 0


def mlflow_run_name(config: Config) -> str:
    """Readable from the config: preset/dataset/variant/seedN."""
    return f"{config.preset}/{config.data.dataset}/{config.variant}/seed{config.seed}"


def prepare_run_folder(config: Config, run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite results; write config.yaml (the workers check it on resume)."""
    config_path = run_dir / "config.yaml"
    if resume:
        if not config_path.is_file():
            raise UserError(f"{run_dir}: nothing to resume (no config.yaml)")
        if config_path.read_text() != config.to_yaml():
            raise UserError(f"{config_path}: the run was started with another config; resume "
                            "it without overrides or pick another --name")
        return
    if (run_dir / "metrics.jsonl").exists() or (run_dir / "summary.json").exists():
        raise UserError(f"{run_dir}: run folder already holds results; pass --resume or choose "
                        "another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(config.to_yaml())


def prepare_remote_run_folder(config: Config, sync, resume: bool) -> None:
    """prepare_run_folder for S3 storage: the bucket's copy of the run folder is the truth,
    the mirror a cache of it (pulled on resume, cleared for a new run), config.yaml pushed."""
    import shutil

    if resume:
        sync.pull()
        if not (sync.local / "config.yaml").is_file():
            raise UserError(f"{sync.url}: nothing to resume (no config.yaml)")
    elif sync.remote_has("metrics.jsonl") or sync.remote_has("summary.json"):
        raise UserError(f"{sync.url}: run folder already holds results; pass --resume or "
                        "choose another --name")
    elif sync.local.exists():
        shutil.rmtree(sync.local)  # left over from a run the bucket no longer holds
    prepare_run_folder(config, sync.local, resume)
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
                                  run_key=run_url or str(run_dir.resolve()),
                                  artifact_location=artifacts)
    return tracker, uri


def log_run_artifacts(tracker, run_dir: Path, log_model: bool) -> None:
    for name in ("summary.json", "config.yaml", "metrics.jsonl"):
        if (run_dir / name).is_file():
            tracker.log_artifact(run_dir / name)
    if (run_dir / "predictions").is_dir():
        tracker.log_artifact(run_dir / "predictions", "predictions")
    if log_model and (run_dir / "checkpoints" / "best.pt").is_file():
        tracker.log_artifact(run_dir / "checkpoints" / "best.pt", "checkpoints")


def run_training(config: Config, storage: str | Path, run_dir: Path, *, resume: bool = False,
                 tracking: TrackingOptions | None = None,
                 distributed: DistributedOptions | None = None,
                 stage_cache: Any = None, show_progress: bool = True,
                 log: Callable[[str], None] = print, hooks: Any = None,
                 ray_callbacks: list | None = None) -> dict[str, Any]:
    """Train `config` into `run_dir`, locally or on Ray, tracked in MLflow; return the summary.

    The MLflow run ends FINISHED, FAILED (an exception) or KILLED (Ctrl-C / SIGTERM).
    `hooks`: TrainHooks for a local run (a Tune trial reports through them);
    `ray_callbacks`: Ray Train callbacks (a Tune trial passes TuneReportCallback).

    S3 storage (`s3://bucket/prefix`): `run_dir` must lie in the mirror, `{mirror}/{name}`
    (`name` may have several parts: a study's trials sit in `{study}/trials/{key}`); the run
    folder is pushed to `{storage}/{name}/` after every epoch and at the end (hivg.
    orchestration.remote_storage), and pulled first on resume."""
    from hivg.orchestration.remote_storage import RunFolderSync, SyncHooks, open_storage

    remote = open_storage(storage)
    sync = None
    if remote:
        remote.check()  # a bad bucket, endpoint or missing credentials: one line, exit 2
        if remote.mirror not in Path(run_dir).resolve().parents:
            raise ValueError(f"run_dir {run_dir}: with S3 storage it must sit in the mirror "
                             f"{remote.mirror}")
        sync = RunFolderSync(remote, Path(run_dir).resolve().relative_to(remote.mirror)
                             .as_posix())
    tracking = tracking or TrackingOptions()
    distributed = distributed or DistributedOptions()
    on_ray = distributed.workers is not None
    resources = None
    if on_ray:
        from hivg.orchestration import ray_train

        resources = ray_train.RayResources(distributed.workers, distributed.gpus_per_worker,
                                           distributed.cpus_per_worker)
        address = ray_train.cluster_address(distributed.address)
        ray_train.connect(address, num_cpus=None if address else
                          max(2, resources.workers * resources.cpus_per_worker) + 1, log=log)
        ray_train.check_resources(resources)
        ray_train.check_shared_storage(storage)
    if tracking.enabled:  # an unreachable server fails before anything is written
        from hivg.tracking import check_reachable, resolve_tracking_uri

        check_reachable(resolve_tracking_uri(tracking.uri, str(storage)))
        if on_ray:
            ray_train.check_tracking_uri_for_cluster(resolve_tracking_uri(tracking.uri,
                                                                         str(storage)))
    if sync:
        prepare_remote_run_folder(config, sync, resume)
        if on_ray:  # workers on other nodes pull the data and weights from the bucket
            from hivg.orchestration.node_inputs import share_inputs

            share_inputs(config, remote, log)
    else:
        prepare_run_folder(config, run_dir, resume)
    world = distributed.workers or 1
    device_type = "cuda" if distributed.gpus_per_worker > 0 or config.device.startswith("cuda") \
        else ("cpu" if config.device == "cpu" or on_ray else _local_device_type(config))
    tracker, uri = start_tracker(config, storage, run_dir, tracking, world, device_type,
                                 run_url=sync.url if sync else None)
    if uri:
        log(f"mlflow: {uri} (experiment {tracking.experiment or config.preset}, run "
            f"{mlflow_run_name(config)})")

    with _lifecycle(tracker):
        if on_ray:
            from hivg.orchestration import ray_train

            summary = ray_train.train_on_ray(config, run_dir, resources,
                                             max_failures=distributed.max_failures,
                                             tracker=tracker if uri else None,
                                             stage_cache=stage_cache,
                                             ray_storage=_ray_storage(storage),
                                             callbacks=ray_callbacks, sync=sync)
        else:
            from hivg.train.fit import fit
            from hivg.train.hooks import TrainHooks

            if sync:
                hooks = SyncHooks(hooks or TrainHooks(), sync)
            summary = fit(config, run_dir, hooks=hooks, tracker=tracker, resume=True,
                          show_progress=show_progress, log=log, stage_cache=stage_cache)
            if sync:
                sync.push()  # summary, predictions, best.pt
        log_run_artifacts(tracker, run_dir, tracking.log_model)
    if uri:
        from hivg.tracking import ui_command

        summary["mlflow_ui"] = ui_command(uri)
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
