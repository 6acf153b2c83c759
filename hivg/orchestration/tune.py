"""Studies on Ray Tune: a search space (Optuna TPE + ASHA) or named variants (a grid of
variants x datasets x seeds). Each Tune trial is a driver function that runs one training
run through `run_training` (in the trial's process, or on its own Ray Train workers), with
the shared stage cache; only validation metrics reach Tune.

Layout under the storage, per study:
    {storage}/{study}/study.yaml             the study file as run
    {storage}/{study}/trials/{trial key}/    each trial's run folder (the trainer's layout)
    {storage}/{study}/tune/                  Tune's own state (resume)
    {storage}/{study}/results.json, table.md the study's table
MLflow: one experiment per study, a parent run for the study, one child run per trial. Run
identity comes from the study name and the trial key, so running the same study again into the
same storage finds its runs instead of duplicating them.

S3 storage (`s3://bucket/prefix`, credentials from the environment): the same layout in the
bucket. Tune writes its state there itself; each trial's run folder is pushed from the trial's
node after every epoch (hivg.orchestration.remote_storage), and the stage cache is the
bucket's. The driver works in its local mirror: it pulls the trials' summaries, configs and
predictions for the table and the report, and pushes the study's files. `--resume` from any
machine with access to the bucket restores Tune's state from it and reuses finished trials.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hivg.errors import UserError
from hivg.orchestration.remote_storage import RemoteStorage, open_storage
from hivg.orchestration.run import DistributedOptions, TrackingOptions, run_training
from hivg.orchestration.search_space import (Study, config_for, grid_points,
                                             sample_space, variant_trials)

EPOCH_ATTR = "global_epoch"  # our own counter: Tune's iteration restarts after a restore


@dataclass
class StudyOptions:
    name: str | None = None
    num_samples: int | None = None
    max_concurrent: int | None = None
    workers_per_trial: int | None = None    # None: the study file's resources.workers
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    mlflow_uri: str | None = None
    mlflow: bool = True
    address: str | None = None
    resume: bool = False
    search_seed: int = 0
    grid: bool = False                      # spaces: the full grid instead of TPE
    scheduler: bool | None = None           # None: the study file's choice
    extra: dict[str, Any] = field(default_factory=dict)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


# -- the trial ------------------------------------------------------------------------------
class _TuneHooks:
    """In-process trials: the trainer's per-epoch report goes to Tune (validation only)."""

    def __new__(cls):
        from ray import tune

        from hivg.train.hooks import TrainHooks

        class Hooks(TrainHooks):
            def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
                tune.report({k: v for k, v in metrics.items()
                             if isinstance(v, (int, float)) and not k.startswith("test")})

        return Hooks()


def _trial(tune_config: dict[str, Any], *, study: Study, storage: str, study_name: str,
           parent_run_id: str | None, tracking_uri: str | None, workers: int,
           cpus_per_worker: float, gpus_per_worker: float) -> None:
    from ray import tune

    from hivg.orchestration.remote_stage_cache import stage_cache_for

    params = tune_config["trial"]
    key = params["trial_key"]
    overrides = params.get("overrides", {})
    config = config_for(study, overrides, params["dataset"], params["seed"], params["variant"])
    remote = open_storage(storage)
    storage_path = remote.mirror if remote else Path(storage)
    if remote:  # this node may not be the driver's: its data and weights come from the bucket
        from hivg.orchestration.node_inputs import fetch_inputs

        fetch_inputs(config, remote)
    rel = f"{study_name}/trials/{safe_name(key)}"
    run_dir = storage_path / rel
    summary_path = run_dir / "summary.json"
    if remote and not summary_path.is_file() and remote.exists(f"{rel}/summary.json"):
        remote.download(f"{rel}/summary.json", summary_path)  # finished on another machine
    if summary_path.is_file():  # finished in an earlier invocation: report, do not retrain
        summary = json.loads(summary_path.read_text())
        tune.report({study.metric: summary["best"]["val/acc50"], EPOCH_ATTR:
                     summary["epochs_trained"], "reused": 1})
        return
    tracking = TrackingOptions(enabled=tracking_uri is not None, uri=tracking_uri,
                               experiment=study_name, parent_run_id=parent_run_id,
                               extra_tags={"study": study_name, "trial_key": key,
                                           "trial_id": tune.get_context().get_trial_id()})
    cache = stage_cache_for(storage)
    resume = (run_dir / "config.yaml").is_file() if remote is None \
        else remote.exists(f"{rel}/config.yaml")
    if workers == 0:
        run_training(config, storage, run_dir, resume=resume, tracking=tracking,
                     stage_cache=cache, show_progress=False, log=print, hooks=_TuneHooks())
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        run_training(config, storage, run_dir, resume=resume, tracking=tracking,
                     stage_cache=cache, show_progress=False, log=print,
                     distributed=DistributedOptions(workers=workers,
                                                    cpus_per_worker=cpus_per_worker,
                                                    gpus_per_worker=gpus_per_worker,
                                                    address="auto"),
                     ray_callbacks=[TuneReportCallback()])


# -- the study ------------------------------------------------------------------------------
def _trial_params(study: Study, options: StudyOptions) -> list[dict[str, Any]]:
    """Variants (and spaces searched as a full grid): every trial spelled out."""
    if study.kind == "variants":
        return [{"trial_key": t.key, "variant": t.variant, "dataset": t.dataset, "seed": t.seed,
                 "overrides": t.overrides} for t in variant_trials(study)]
    points = grid_points(study)
    return [{"trial_key": f"grid{i:03d}/{d}/seed{study.seeds[0]}", "variant": f"grid{i:03d}",
             "dataset": d, "seed": study.seeds[0], "overrides": p}
            for d in study.datasets for i, p in enumerate(points)]


def study_storage(storage: str | Path) -> tuple[Path, RemoteStorage | None]:
    """(the local folder a study works in, the bucket or None): a folder is its own local
    folder; `s3://bucket/prefix` works in its mirror and is checked first (one line on a bad
    bucket, endpoint or missing credentials)."""
    remote = open_storage(storage)
    if remote:
        remote.check()
        return remote.mirror, remote
    return Path(storage).resolve(), None


def run_study(study: Study, storage: str | Path, options: StudyOptions,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every trial of `study`; return the study's results (also written to storage:
    a folder, or `s3://bucket/prefix` through the local mirror)."""
    import ray
    from ray import tune

    from hivg.orchestration import ray_train

    ray_was_up = ray.is_initialized()
    name = options.name or study.name
    storage, remote = study_storage(storage)
    study_dir = storage / name
    workers = study.resources.workers if options.workers_per_trial is None \
        else options.workers_per_trial
    cpus = options.cpus_per_worker or study.resources.cpus_per_worker
    gpus = study.resources.gpus_per_worker if options.gpus_per_worker is None \
        else options.gpus_per_worker

    # Locally: one logical CPU more than the cores, for the fractional trial drivers.
    address = ray_train.cluster_address(options.address)
    ray_train.connect(address, log=log, num_cpus=None if address else (os.cpu_count() or 1) + 1)
    compute_cpu = cpus if workers == 0 else workers * cpus
    per_trial_cpu = compute_cpu if workers == 0 else 0.25 + compute_cpu
    total_cpu = ray.cluster_resources().get("CPU", 0)
    total_gpu = ray.cluster_resources().get("GPU", 0)
    if per_trial_cpu > total_cpu or max(workers, 1) * gpus > total_gpu:
        raise UserError(f"a trial needs {per_trial_cpu:g} CPUs and {max(workers, 1) * gpus:g} "
                        f"GPUs; the cluster has {total_cpu:g} CPUs and {total_gpu:g} GPUs")
    usable = total_cpu - (1 if not address and not ray_was_up else 0)
    concurrent = options.max_concurrent or max(1, int(usable // compute_cpu))
    if gpus:
        concurrent = min(concurrent, max(1, int(total_gpu // (max(workers, 1) * gpus))))

    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "study.yaml").write_text(study.text)
    if remote:
        from hivg.orchestration.node_inputs import share_inputs

        push_study_files(remote, storage, name)
        for dataset in study.datasets:  # trials on other nodes pull them from the bucket
            share_inputs(study.base.replace({"data.dataset": dataset}), remote, log)
    tracker, uri = _parent_run(study, storage, name, options)

    trainable = tune.with_parameters(
        _trial, study=study, storage=remote.uri if remote else str(storage), study_name=name,
        parent_run_id=getattr(tracker, "run_id", None), tracking_uri=uri, workers=workers,
        cpus_per_worker=cpus, gpus_per_worker=gpus)
    resources = {"CPU": per_trial_cpu if workers == 0 else 0.25}
    if workers == 0 and gpus:
        resources["GPU"] = gpus
    trainable = tune.with_resources(trainable, resources)

    use_grid = study.kind == "variants" or options.grid
    scheduler = None
    wants_asha = study.scheduler is not None and study.scheduler.get("type") == "asha"
    if options.scheduler is not None:
        wants_asha = options.scheduler
    if not use_grid and wants_asha:
        from ray.tune.schedulers import ASHAScheduler

        # One past the last epoch: ASHA stops a trial that reaches max_t at once, which
        # would cut off the trial's final test evaluation and summary.
        max_t = int(study.scheduler.get("max_t") or
                    max(sum(s.epochs for s in study.base.hilora.stages), 1)) + 1
        scheduler = ASHAScheduler(time_attr=EPOCH_ATTR, max_t=max_t,
                                  grace_period=int(study.scheduler.get("grace_period", 1)),
                                  reduction_factor=float(study.scheduler.get("reduction_factor", 3)))

    # Tune's state beside the trials; on S3 Tune writes it to the bucket itself.
    tune_dir = remote.url(f"{name}/tune") if remote else str(study_dir / "tune")
    results: list[dict[str, Any]] = []
    start = time.time()
    lifecycle = contextlib.nullcontext()
    if uri:
        from hivg.tracking import tracked_run

        lifecycle = tracked_run(tracker)
    with lifecycle:
        if use_grid:
            params = _trial_params(study, options)
            log(f"study {name}: {len(params)} trials ({study.kind}), up to {concurrent} at once")
            results.append(_fit(tune, trainable, {"trial": tune.grid_search(params)}, None,
                                scheduler, 1, concurrent, tune_dir, "grid",
                                options.resume, study))
        else:
            from optuna.samplers import TPESampler
            from ray.tune.search.optuna import OptunaSearch

            n = options.num_samples or study.num_samples
            for dataset in study.datasets:
                searcher = OptunaSearch(
                    space=_DefineByRun(study, dataset),
                    metric=study.metric, mode=study.mode,
                    sampler=TPESampler(seed=options.search_seed))
                log(f"study {name}: TPE over {dataset}, {n} trials, up to {concurrent} at once")
                results.append(_fit(tune, trainable, {}, searcher, scheduler, n, concurrent,
                                    tune_dir, f"search-{safe_name(dataset)}",
                                    options.resume, study))
        _close_orphans(uri, name)
        failed = [f"{r.config['trial']['trial_key']}: {type(r.error).__name__}: "
                  f"{str(r.error).strip().splitlines()[-1] if str(r.error).strip() else ''}"
                  for grid in results for r in grid if r.error is not None]
        for line in failed:
            log(f"trial failed: {line}")
        if remote:  # the trials may have run on other nodes: their results are in the bucket
            pull_trial_results(remote, storage, name)
        table = collect(study, storage, name)
        table["failed_trials"] = failed
        table["wall_time_s"] = time.time() - start
        (study_dir / "results.json").write_text(json.dumps(table, indent=2))
        (study_dir / "table.md").write_text(format_table(table))
        if remote:
            push_study_files(remote, storage, name)
            table["storage_url"] = remote.url(name)
        if uri:
            tracker.log_artifact(study_dir / "study.yaml")
            tracker.log_artifact(study_dir / "table.md")
            tracker.log_artifact(study_dir / "results.json")
    if uri:
        from hivg.tracking import ui_command

        table["mlflow_ui"] = ui_command(uri)
        table["mlflow_uri"] = uri
    return table


# Per trial, what the table and the report read; checkpoints stay in the bucket.
TRIAL_RESULT_FILES = ("summary.json", "config.yaml", "metrics.jsonl")


def pull_trial_results(remote: RemoteStorage, storage: Path, name: str) -> int:
    """Download every trial's summary, config, metrics and predictions from the bucket into
    the mirror (files already there with the same size are kept); return how many."""
    pulled = 0
    for rel, size in sorted(remote.sizes(f"{name}/trials").items()):
        base = rel.rsplit("/", 1)[-1]
        if not (base in TRIAL_RESULT_FILES or "/predictions/" in f"/{rel}"):
            continue
        local = storage / name / "trials" / rel
        if local.is_file() and local.stat().st_size == size:
            continue
        remote.download(f"{name}/trials/{rel}", local)
        pulled += 1
    return pulled


def push_study_files(remote: RemoteStorage, storage: Path, name: str,
                     report_only: bool = False) -> None:
    """The study's own files (study.yaml, results.json, table.md, report/) to the bucket;
    `report_only`: just report/, written after the study's other files were pushed."""
    study_dir = storage / name
    files = [] if report_only else \
        [p for p in study_dir.glob("*") if p.is_file() and not p.name.startswith(".")]
    if (study_dir / "report").is_dir():
        files += [p for p in (study_dir / "report").rglob("*") if p.is_file()]
    for path in files:
        remote.upload(path, f"{name}/{path.relative_to(study_dir).as_posix()}")


class _DefineByRun:
    """Optuna define-by-run space (picklable: Tune saves the searcher with the study)."""

    def __init__(self, study: Study, dataset: str) -> None:
        self.study, self.dataset = study, dataset

    def __call__(self, trial) -> dict[str, Any]:
        return {"trial": _space_point(self.study, trial, self.dataset)}


def _space_point(study: Study, trial, dataset: str) -> dict[str, Any]:
    overrides = sample_space(study, trial)
    number = trial.number
    key = f"t{number:03d}/{dataset}/seed{study.seeds[0]}"
    return {"trial_key": key, "variant": f"t{number:03d}", "dataset": dataset,
            "seed": study.seeds[0], "overrides": overrides}


def _fit(tune, trainable, param_space, searcher, scheduler, num_samples, concurrent,
         tune_dir: str, run_name: str, resume: bool, study: Study):
    path = f"{tune_dir}/{run_name}"
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=study.metric, mode=study.mode, search_alg=searcher, scheduler=scheduler,
                num_samples=num_samples, max_concurrent_trials=concurrent,
                trial_dirname_creator=lambda t: t.trial_id),
            run_config=tune.RunConfig(name=run_name, storage_path=tune_dir,
                                      failure_config=tune.FailureConfig(max_failures=1)))
    return tuner.fit()


def _parent_run(study: Study, storage: Path, name: str, options: StudyOptions):
    from hivg.train.hooks import NullTracker

    if not options.mlflow:
        return NullTracker(), None
    from hivg.tracking import MlflowTracker, check_reachable, package_tags, resolve_tracking_uri

    uri = resolve_tracking_uri(options.mlflow_uri, str(storage))
    check_reachable(uri)
    from hivg.orchestration.ray_train import check_tracking_uri_for_cluster

    check_tracking_uri_for_cluster(uri)
    artifacts = (storage / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    tracker = MlflowTracker.start(uri, name, run_name=f"study/{name}",
                                  tags={"study": name, "kind": study.kind, **package_tags()},
                                  run_key=f"study:{name}", artifact_location=artifacts)
    tracker.log_params({"base": study.base.preset, "datasets": ",".join(study.datasets),
                        "seeds": ",".join(map(str, study.seeds)), "metric": study.metric,
                        "mode": study.mode})
    return tracker, uri


def _close_orphans(uri: str | None, experiment: str) -> None:
    """Trials stopped early by ASHA (or lost with their actor) never reached their own
    `finally`: mark their MLflow runs KILLED so none stays RUNNING."""
    if not uri:
        return
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'"):
        if run.data.tags.get("trial_key"):
            client.set_tag(run.info.run_id, "stopped", "early stop or lost trial")
            client.set_terminated(run.info.run_id, "KILLED")


# -- the study's table -----------------------------------------------------------------------
def collect(study: Study, storage: Path, name: str) -> dict[str, Any]:
    """Every finished trial's summary, and acc50 mean +- std over seeds per variant x dataset."""
    trials = []
    for path in sorted((storage / name / "trials").glob("**/summary.json")):
        s = json.loads(path.read_text())
        config = (path.parent / "config.yaml").read_text()
        import yaml

        c = yaml.safe_load(config)
        trials.append({"variant": c["variant"], "dataset": c["data"]["dataset"],
                       "seed": c["seed"], "val/acc50": s.get("val/acc50"),
                       "test/acc50": s.get("test/acc50"), "wall_time_s": s["wall_time_s"],
                       "epochs": s["epochs_trained"], "run_dir": str(path.parent)})
    cells: dict[tuple[str, str], list[dict]] = {}
    for t in trials:
        cells.setdefault((t["variant"], t["dataset"]), []).append(t)
    rows = []
    order = list(study.variants) if study.variants else sorted({t["variant"] for t in trials})
    for variant in order:
        for dataset in study.datasets:
            group = cells.get((variant, dataset), [])
            if not group:
                continue
            row = {"variant": variant, "dataset": dataset, "seeds": len(group)}
            for metric in ("val/acc50", "test/acc50"):
                values = [g[metric] for g in group if g[metric] is not None
                          and not math.isnan(g[metric])]
                row[metric] = statistics.fmean(values) if values else float("nan")
                row[metric + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            rows.append(row)
    return {"study": name, "kind": study.kind, "metric": study.metric, "rows": rows,
            "trials": trials}


def format_table(table: dict[str, Any]) -> str:
    datasets = list(dict.fromkeys(r["dataset"] for r in table["rows"]))
    variants = list(dict.fromkeys(r["variant"] for r in table["rows"]))
    cell = {(r["variant"], r["dataset"]): r for r in table["rows"]}
    lines = ["| variant | " + " | ".join(f"{d} test acc50" for d in datasets) + " |",
             "|---|" + "---|" * len(datasets)]
    for v in variants:
        parts = []
        for d in datasets:
            r = cell.get((v, d))
            parts.append("-" if r is None else
                         f"{r['test/acc50']:.3f} ± {r['test/acc50_std']:.3f} (n={r['seeds']})")
        lines.append(f"| {v} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"
