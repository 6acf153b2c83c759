"""Studies on Ray Tune: a search space (Optuna TPE + ASHA) or named variants (a grid of
variants x datasets x seeds). Each Tune trial is a driver function that runs one training
run through `run_training` (in the trial's process, or on its own Ray Train workers), with
the shared stage cache; only validation metrics reach Tune.

`run_study` in its steps: the trials' resources (and how many run at once), the scheduler
(ASHA or none), the searcher (TPE per dataset, or the grid), one Tuner per search, and the
finish (results.json, table.md, S3, MLflow).

Layout under the storage, per study:
    {storage}/{study}/study.yaml             the study file as run
    {storage}/{study}/study.N.yaml           earlier versions of it (kept when it changed)
    {storage}/{study}/trials/{trial key}/    each trial's run folder (hivg.run_folder)
    {storage}/{study}/superseded/{key}.{hash}.{time}/  run folders of trials whose config
                                             changed (set aside, then trained again)
    {storage}/{study}/tune/                  Tune's own state (resume)
    {storage}/{study}/results.json, table.md the study's results and table (hivg.analysis)
MLflow: one experiment per study, a parent run for the study, one child run per trial. Run
identity comes from the study name and the trial key, so running the same study again into the
same storage finds its runs instead of duplicating them.

Trial identity: the hash of a trial's resolved config without paths or placement
(hivg.run_folder.Identity), stored in its run folder. A finished trial is reused only when
its stored identity is the one the study file resolves to now; a trial whose config changed
is said in one line ("changed: KEY (config differs: ...)"), its run folder set aside under
superseded/, and trained again. Trials the study no longer has keep their folders but leave
the table.

S3 storage (`s3://bucket/prefix`, credentials from the environment): the same layout in the
bucket. Tune writes its state there itself; each trial's run folder is pushed from the trial's
node after every epoch (hivg.orchestration.remote_storage), and the stage cache is the
bucket's. The driver works in its local mirror: it pulls the trials' summaries, configs and
predictions for the table and the report, and pushes the study's files. `--resume` from any
machine with access to the bucket restores Tune's state from it and reuses finished trials.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hivg.analysis import compute_table, load_study_results, to_markdown
from hivg.analysis.stage_savings import stage_epochs
from hivg.analysis.study import RESULTS, STUDY_FILE, TABLE, results_rows, trial_row
from hivg.errors import UserError
from hivg.orchestration.remote_storage import RemoteStorage, open_storage
from hivg.orchestration.resources import Resources, concurrent_trials
from hivg.orchestration.run import TrackingOptions, run_training
from hivg.orchestration.search_space import (Study, config_for, grid_points,
                                             sample_space, variant_trials)
from hivg.run_folder import (CONFIG, IDENTITY, PREDICTIONS, RESULT_FILES, SUMMARY, TRIALS,
                             Identity, RunFolder, Trial, load_trials, safe_name)

EPOCH_ATTR = "global_epoch"  # our own counter: Tune's iteration restarts after a restore
RESUMED_TAG = "hivg.resumed"  # on a study's MLflow run: how many times it was resumed
SUPERSEDED = "superseded"  # {study}/superseded/: run folders of trials whose config changed
# What tells whether a trial started, finished and as what: fetched from the bucket first.
RECORD_FILES = (CONFIG, IDENTITY, SUMMARY)


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
    extend: int | None = None               # spaces: this many more trials, TPE's history kept
    search_seed: int = 0
    grid: bool = False                      # spaces: the full grid instead of TPE
    scheduler: bool | None = None           # None: the study file's choice
    # Tune keeps trial processes warm across trials (imports and Ray's actor start paid once
    # per process, not per trial); False starts a fresh process per trial.
    reuse_actors: bool = True
    # What trains inside a trial (default hivg.train.fit.fit); the orchestration-scale
    # benchmark swaps in a no-op body and keeps the rest of the study path.
    trial_fit: Callable[..., dict[str, Any]] | None = None


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


def finished_result(folder: RunFolder, study: Study,
                    identity: Identity | None = None) -> dict[str, Any] | None:
    """What a trial finished in an earlier invocation reports instead of training again:
    the study's metric as the run reached it; None when the run has not finished, or (given
    `identity`) when it was stored with another identity."""
    trial = Trial.read(folder)
    if trial is None or not trial.finished:
        return None
    if identity is not None and _stored_hash(folder) != identity.hash:
        return None
    return {study.metric: trial.best_value(study.metric, study.mode),
            EPOCH_ATTR: trial.epochs, "reused": 1}


def _stored_hash(folder: RunFolder) -> str | None:
    stored = folder.read_identity()
    return stored.hash if stored else None


def trial_identity(config) -> Identity:
    return Identity.of(config.to_dict())


def fetch_trial_record(remote: RemoteStorage, rel: str, folder: RunFolder) -> None:
    """The bucket's config, identity and summary of a trial into the mirror (the bucket is
    the truth: a file it lacks goes from the mirror too)."""
    present = remote.sizes(rel)
    for name in RECORD_FILES:
        if name in present:
            remote.download(f"{rel}/{name}", folder.path / name)
        else:
            (folder.path / name).unlink(missing_ok=True)


def set_aside_if_changed(folder: RunFolder, identity: Identity, key: str,
                         remote: RemoteStorage | None, rel: str,
                         log: Callable[[str], None]) -> bool:
    """A trial stored with another identity: one line naming what differs, and its run
    folder moved to {study}/superseded/ (here and in the bucket) so that it trains afresh.
    Returns whether it changed."""
    stored = folder.read_identity()
    if stored is None or stored.hash == identity.hash:
        return False
    keys = stored.differences(identity)
    shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} keys)" if len(keys) > 5 else "")
    log(f"changed: {key} (config differs: {shown or 'identity hash'})")
    study_rel, _, name = rel.rpartition(f"/{TRIALS}/")
    aside = f"{study_rel}/{SUPERSEDED}/{name}.{stored.hash[:8]}.{time.strftime('%Y%m%dT%H%M%S')}"
    if remote:
        for file in remote.sizes(rel):
            remote.move(f"{rel}/{file}", f"{aside}/{file}")
    target = folder.path.parents[1] / SUPERSEDED / Path(aside).name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder.path), str(target))
    return True


def record_identity(folder: RunFolder, identity: Identity, remote: RemoteStorage | None,
                    rel: str) -> None:
    """identity.json beside the finished run (and in the bucket)."""
    folder.write_identity(identity)
    if remote:
        remote.upload(folder.identity_path, f"{rel}/{IDENTITY}")


def _trial(tune_config: dict[str, Any], *, study: Study, storage: str, study_name: str,
           parent_run_id: str | None, tracking_uri: str | None,
           resources: Resources, fit_fn: Callable[..., dict[str, Any]] | None = None) -> None:
    from ray import tune

    from hivg.orchestration.remote_stage_cache import stage_cache_for

    params = tune_config["trial"]
    key = params["trial_key"]
    config = config_for(study, params.get("overrides", {}), params["dataset"], params["seed"],
                        params["variant"])
    remote = open_storage(storage)
    if remote:  # this node may not be the driver's: its data and weights come from the bucket
        from hivg.orchestration.node_inputs import fetch_inputs

        fetch_inputs(config, remote)
    rel = f"{study_name}/{TRIALS}/{safe_name(key)}"
    folder = RunFolder((remote.mirror if remote else Path(storage)) / rel)
    identity = trial_identity(config)
    if remote:  # it may have run (or changed) on another machine
        fetch_trial_record(remote, rel, folder)
    # Searches (TPE) meet their trials' configs here first; variants and grids in the driver.
    set_aside_if_changed(folder, identity, key, remote, rel, print)
    reused = finished_result(folder, study, identity)
    if reused is not None:  # finished in an earlier invocation: report, do not retrain
        tune.report(reused)
        return
    if tracking_uri is not None:  # a password comes from this node's environment
        from hivg.tracking.mlflow_tracker import shared_uri

        tracking_uri = shared_uri(tracking_uri)
    tracking = TrackingOptions(enabled=tracking_uri is not None, uri=tracking_uri,
                               experiment=study_name, parent_run_id=parent_run_id,
                               extra_tags={"study": study_name, "trial_key": key,
                                           "trial_id": tune.get_context().get_trial_id()},
                               # not where the folder lies: a resume may run elsewhere
                               run_key=f"trial:{study_name}/{key}/{identity.hash}")
    resume = folder.config_path.is_file() if remote is None else remote.exists(f"{rel}/{CONFIG}")
    common = dict(resume=resume, tracking=tracking, stage_cache=stage_cache_for(storage),
                  show_progress=False, log=print)
    if resources.on_workers:
        from ray.tune.integration.ray_train import TuneReportCallback

        run_training(config, storage, folder.path, resources=resources, address="auto",
                     ray_callbacks=[TuneReportCallback()], **common)
    else:
        run_training(config, storage, folder.path, hooks=_TuneHooks(), fit_fn=fit_fn, **common)
    record_identity(folder, identity, remote, rel)


# -- the study ------------------------------------------------------------------------------
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
    from ray import tune

    name = options.name or study.name
    local, remote = study_storage(storage)
    if options.mlflow:  # before Ray starts: its local workers inherit this environment
        from hivg.tracking.mlflow_tracker import resolve_tracking_uri, shareable_uri

        shareable_uri(resolve_tracking_uri(options.mlflow_uri, str(local)))
    resources, concurrent = _resources(study, options, log)
    study_dir = local / name
    study_dir.mkdir(parents=True, exist_ok=True)
    edited = keep_earlier_study_file(study_dir, remote, name, study.text, log)
    (study_dir / STUDY_FILE).write_text(study.text)
    set_aside_changed_trials(study, options, local, remote, name, log)
    if remote:
        from hivg.orchestration.node_inputs import share_inputs

        push_study_files(remote, local, name)
        for dataset in study.datasets:  # trials on other nodes pull them from the bucket
            share_inputs(study.base.replace({"data.dataset": dataset}), remote, log)
    tracker, uri = _parent_run(study, local, name, options)
    trainable = tune.with_resources(tune.with_parameters(
        _trial, study=study, storage=remote.uri if remote else str(local), study_name=name,
        parent_run_id=getattr(tracker, "run_id", None), tracking_uri=_shareable(uri),
        resources=resources, fit_fn=options.trial_fit), resources.trial_bundle())
    # Tune's state beside the trials; on S3 Tune writes it to the bucket itself.
    tune_dir = remote.url(f"{name}/tune") if remote else str(study_dir / "tune")
    start = time.time()
    lifecycle = contextlib.nullcontext()
    if uri:
        from hivg.tracking import tracked_run

        lifecycle = tracked_run(tracker)
    with lifecycle:
        # An edited study starts a new Tune run: a restored one would replay the old trials'
        # configs. Finished trials are reused all the same (by identity).
        if options.resume and edited:
            log("study file changed: its Tune state is not restored; unchanged finished "
                "trials are reused")
        fits = [_tune(trainable, search, study, _scheduler(study, options), concurrent,
                      tune_dir, options.resume and not edited, log, options.reuse_actors)
                for search in _searches(study, options, name, local, remote)]
        _close_orphans(uri, name)
        results = _finish(study, local, remote, name, fits, resources, time.time() - start,
                          tracker if uri else None, log, current_trial_folders(study, options))
    if uri:
        from hivg.tracking import ui_command

        results["mlflow_ui"] = ui_command(uri)
        results["mlflow_uri"] = uri
    return results


def keep_earlier_study_file(study_dir: Path, remote: RemoteStorage | None, name: str,
                            text: str, log: Callable[[str], None]) -> bool:
    """Before study.yaml is written: an earlier, different one (the bucket's, on S3) is kept
    as study.N.yaml (N: the next free number), said in one line. Returns whether the study
    file changed."""
    if remote:
        data = remote.read_bytes(f"{name}/{STUDY_FILE}")
        earlier = data.decode() if data is not None else None
    else:
        path = study_dir / STUDY_FILE
        earlier = path.read_text() if path.is_file() else None
    if earlier is None or earlier == text:
        return False
    taken = {p.name for p in study_dir.glob("study.*.yaml")}
    if remote:
        taken |= {rel for rel in remote.sizes(name) if "/" not in rel}
    n = 1
    while f"study.{n}.yaml" in taken:
        n += 1
    (study_dir / f"study.{n}.yaml").write_text(earlier)  # pushed with the study's files
    log(f"study file changed: the earlier version is kept as {name}/study.{n}.yaml")
    return True


def set_aside_changed_trials(study: Study, options: StudyOptions, local: Path,
                             remote: RemoteStorage | None, name: str,
                             log: Callable[[str], None]) -> list[str]:
    """Variants and grids (every trial known up front): each trial stored with another
    identity is said and set aside before any trial starts. Returns their keys."""
    if study.kind != "variants" and not options.grid:
        return []
    changed = []
    for params in _trial_params(study):
        key = params["trial_key"]
        rel = f"{name}/{TRIALS}/{safe_name(key)}"
        folder = RunFolder(local / rel)
        if remote:
            fetch_trial_record(remote, rel, folder)
        config = config_for(study, params["overrides"], params["dataset"], params["seed"],
                            params["variant"])
        if set_aside_if_changed(folder, trial_identity(config), key, remote, rel, log):
            changed.append(key)
    return changed


def current_trial_folders(study: Study, options: StudyOptions) -> set[str] | None:
    """The run folder names of the study's trials as it now stands; None for a search
    (its trials are whatever the searcher sampled)."""
    if study.kind != "variants" and not options.grid:
        return None
    return {safe_name(p["trial_key"]) for p in _trial_params(study)}


def _resources(study: Study, options: StudyOptions,
               log: Callable[[str], None]) -> tuple[Resources, int]:
    """Each trial's resources (the study file's, as the flags override them), Ray connected,
    and how many trials run at once."""
    import ray

    from hivg.orchestration import ray_train

    ray_was_up = ray.is_initialized()
    file = study.resources
    resources = Resources(
        workers=file.workers if options.workers_per_trial is None else options.workers_per_trial,
        cpus_per_worker=file.cpus_per_worker if options.cpus_per_worker is None
        else options.cpus_per_worker,
        gpus_per_worker=file.gpus_per_worker if options.gpus_per_worker is None
        else options.gpus_per_worker)
    # Locally: one logical CPU more than the cores, for the fractional trial drivers.
    address = ray_train.cluster_address(options.address)
    ray_train.connect(address, log=log, num_cpus=None if address else (os.cpu_count() or 1) + 1)
    reserved = 1 if not address and not ray_was_up else 0  # the driver's own core
    return resources, concurrent_trials(resources, ray_train.cluster_capacity(), reserved,
                                        options.max_concurrent)


def _scheduler(study: Study, options: StudyOptions):
    """ASHA on our global epoch counter (spaces searched by TPE), or None."""
    wants_asha = study.scheduler is not None and study.scheduler.get("type") == "asha"
    if options.scheduler is not None:
        wants_asha = options.scheduler
    if study.kind == "variants" or options.grid or not wants_asha:
        return None
    from ray.tune.schedulers import ASHAScheduler

    # One past the last epoch: ASHA stops a trial that reaches max_t at once, which would
    # cut off the trial's final test evaluation and summary.
    max_t = int(study.scheduler.get("max_t") or
                max(sum(s.epochs for s in study.base.hilora.stages), 1)) + 1
    return ASHAScheduler(time_attr=EPOCH_ATTR, max_t=max_t,
                         grace_period=int(study.scheduler.get("grace_period", 1)),
                         reduction_factor=float(study.scheduler.get("reduction_factor", 3)))


@dataclass
class _Search:
    """One Tuner's work: every trial spelled out (a grid), or a searcher's samples."""

    run_name: str
    param_space: dict[str, Any]
    searcher: Any
    num_samples: int
    description: str
    trials: int = 0  # how many this Tuner runs (a grid: every point; a search: num_samples)

    def __post_init__(self) -> None:
        self.trials = self.trials or self.num_samples


def _searches(study: Study, options: StudyOptions, name: str, local: Path | None = None,
              remote: RemoteStorage | None = None) -> list[_Search]:
    """Variants, or a space as a full grid: one grid search of every trial. A space: Optuna
    TPE on one Tuner per dataset (`--extend N`: N more trials on a new Tuner whose searcher
    is the last one's, restored with its history; `--resume`: the last of those Tuners)."""
    if study.kind == "variants" or options.grid:
        params = _trial_params(study)
        return [_Search("grid", {"trial": _grid_search(params)}, None, 1,
                        f"study {name}: {len(params)} trials ({study.kind})", len(params))]
    n = study.num_samples if options.num_samples is None else options.num_samples
    searches = []
    for dataset in study.datasets:
        base = f"search-{safe_name(dataset)}"
        runs = tune_runs(local, remote, name, base) \
            if local is not None and (options.extend or options.resume) else []
        searcher = _optuna(study, dataset, options)
        if options.extend:
            if not runs:
                raise UserError(f"--extend: study {name} has no search over {dataset} in its "
                                "storage yet; run it (without --extend) first")
            done = restore_searcher(searcher, local, remote, name, runs[-1])
            searcher._space = _DefineByRun(study, dataset)  # the study as it stands now
            searches.append(_Search(f"{base}{EXTENSION}{len(runs)}", {}, searcher,
                                    options.extend, f"study {name}: TPE over {dataset}, "
                                    f"{options.extend} more trials after {done}"))
            continue
        run_name = runs[-1] if options.resume and runs else base
        searches.append(_Search(run_name, {}, searcher, n,
                                f"study {name}: TPE over {dataset}, {n} trials"))
    return searches


def _optuna(study: Study, dataset: str, options: StudyOptions):
    import optuna
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory"
    return OptunaSearch(space=_DefineByRun(study, dataset), metric=study.metric,
                        mode=study.mode, sampler=TPESampler(seed=options.search_seed))


EXTENSION = ".x"  # search-{dataset}.x1, .x2, ...: the Tuners of `--extend`, in order


def tune_runs(local: Path, remote: RemoteStorage | None, name: str, base: str) -> list[str]:
    """The Tune runs of one search that hold state, in order: `base`, then its extensions."""
    if remote:
        names = {rel.split("/", 1)[0] for rel in remote.sizes(f"{name}/tune")}
    else:
        tune = local / name / "tune"
        names = {p.name for p in tune.iterdir()} if tune.is_dir() else set()
    runs = [n for n in names
            if n == base or re.fullmatch(re.escape(base + EXTENSION) + r"\d+", n)]
    return sorted(runs, key=lambda n: int(n.rpartition(EXTENSION)[2]) if n != base else 0)


def restore_searcher(searcher, local: Path, remote: RemoteStorage | None, name: str,
                     run: str) -> int:
    """The searcher's state as Tune saved it with run `run` (its Optuna study: every trial
    it sampled and the values they reached); returns how many trials that history holds."""
    pattern = searcher.CKPT_FILE_TMPL.format("*")
    with tempfile.TemporaryDirectory() as tmp:
        folder = local / name / "tune" / run
        if remote:
            folder = Path(tmp)
            for rel in remote.sizes(f"{name}/tune/{run}"):
                if "/" not in rel and fnmatch.fnmatch(rel, pattern):
                    remote.download(f"{name}/tune/{run}/{rel}", folder / rel)
        try:
            searcher.restore_from_dir(str(folder))
        except RuntimeError:
            raise UserError(f"--extend: no searcher state in {name}/tune/{run} (the search "
                            "never saved one); resume it with --resume instead") from None
    return len(searcher._ot_study.trials)


def _grid_search(params: list[dict[str, Any]]) -> Any:
    from ray import tune

    return tune.grid_search(params)


def _trial_params(study: Study) -> list[dict[str, Any]]:
    """Variants (and spaces searched as a full grid): every trial spelled out."""
    if study.kind == "variants":
        return [{"trial_key": t.key, "variant": t.variant, "dataset": t.dataset, "seed": t.seed,
                 "overrides": t.overrides} for t in variant_trials(study)]
    points = grid_points(study)
    return [{"trial_key": f"grid{i:03d}/{d}/seed{study.seeds[0]}", "variant": f"grid{i:03d}",
             "dataset": d, "seed": study.seeds[0], "overrides": p}
            for d in study.datasets for i, p in enumerate(points)]


def _tune(trainable, search: _Search, study: Study, scheduler, concurrent: int, tune_dir: str,
          resume: bool, log: Callable[[str], None], reuse_actors: bool = True):
    """One Tuner (restored when resuming and its state exists), run to the end."""
    from ray import tune

    from hivg.orchestration.trial_progress import NoCSV, NoTensorBoard, TrialProgress

    keep_keys_out_of_ray_logs()
    logging.getLogger("ray.tune.tune").setLevel(logging.WARNING)  # "Wrote the latest version..."
    log(f"{search.description}, up to {concurrent} at once")
    path = f"{tune_dir}/{search.run_name}"
    if resume and tune.Tuner.can_restore(path):
        return fit_tuner(tune.Tuner.restore(path, trainable, resume_errored=True))
    return fit_tuner(tune.Tuner(
        trainable,
        param_space=search.param_space,
        tune_config=tune.TuneConfig(
            metric=study.metric, mode=study.mode, search_alg=search.searcher,
            scheduler=scheduler, num_samples=search.num_samples,
            max_concurrent_trials=concurrent, trial_dirname_creator=lambda t: t.trial_id,
            reuse_actors=reuse_actors),
        run_config=tune.RunConfig(name=search.run_name, storage_path=tune_dir,
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  verbose=0,  # Tune's 30 s status tables: TrialProgress instead
                                  callbacks=[TrialProgress(search.trials, study.metric),
                                             NoTensorBoard(), NoCSV()]),
    ))


def fit_tuner(tuner):
    """tuner.fit(); a trial process killed by Ray's memory monitor is one line, not Tune's
    traceback (Tune 2.60 ends the whole run on it: its actor manager expects only actor or
    task errors). The study's state is saved: --resume goes on."""
    try:
        return tuner.fit()
    except RuntimeError as e:
        if "running low on memory" not in str(e):
            raise
        raise UserError("study stopped: Ray killed trial processes because the node ran low on "
                        "memory; finished trials are kept: run it again with --resume and a "
                        "lower --max-concurrent") from None


AWS_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
            "AWS_SESSION_TOKEN"}


def keep_keys_out_of_ray_logs() -> None:
    """Ray Tune copies the driver's AWS keys into every trainable's runtime_env, and Ray's
    runtime_env_agent.log prints that in plain text. Trials need no copy: a local Ray's
    workers inherit the driver's environment, a cluster's nodes have their own credentials
    (an instance role or credentials file, cluster.md)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - AWS_KEYS


def _finish(study: Study, storage: Path, remote: RemoteStorage | None, name: str, fits,
            resources: Resources, wall: float, tracker, log: Callable[[str], None],
            current: set[str] | None = None) -> dict[str, Any]:
    """results.json and table.md from the trials' run folders (pulled from the bucket first:
    the trials may have run on other nodes), pushed back and logged to the parent run.
    `current`: the run folders of the study as it now stands (trials it no longer has keep
    their folders but leave the table); None: every folder."""
    failed = [f"{r.config['trial']['trial_key']}: {type(r.error).__name__}: "
              f"{str(r.error).strip().splitlines()[-1] if str(r.error).strip() else ''}"
              for grid in fits for r in grid if r.error is not None]
    for line in failed:
        log(f"trial failed: {line}")
    if remote:
        pull_trial_results(remote, storage, name)
    study_dir = storage / name
    trials = [t for t in load_trials(study_dir) if current is None or t.folder.name in current]
    order = list(study.variants) if study.variants else None  # spaces: by trial name
    results = {"study": name, "kind": study.kind, "metric": study.metric,
               "rows": results_rows(trials, study.datasets, order),
               "trials": [trial_row(t) for t in trials if t.finished],
               "resources": dataclasses.asdict(resources),
               "failed_trials": failed, "wall_time_s": wall}
    if current is not None:
        results["trial_folders"] = sorted(current)
    saved = stage_epochs(trials)
    results["stage_epochs"] = saved.as_metrics()
    (study_dir / RESULTS).write_text(json.dumps(results, indent=2))
    (study_dir / TABLE).write_text(study_table(storage, name) + f"\n{saved.line()}\n")
    if remote:
        push_study_files(remote, storage, name)
        results["storage_url"] = remote.url(name)
    if tracker is not None:
        tracker.log_metrics(saved.as_metrics(), step=0)
        for file in (STUDY_FILE, TABLE, RESULTS):
            tracker.log_artifact(study_dir / file)
    return results


def study_table(storage: Path, name: str) -> str:
    """The study's table.md: the report's table (hivg.analysis), read without the report."""
    finished = load_study_results(storage, name)
    if not finished.trials:
        return "No finished trials.\n"
    return to_markdown(compute_table(finished), standalone=True)


def pull_trial_results(remote: RemoteStorage, storage: Path, name: str) -> int:
    """Download every trial's summary, config, metrics and predictions from the bucket into
    the mirror (files already there with the same size are kept); return how many."""
    pulled = 0
    for rel, size in sorted(remote.sizes(f"{name}/{TRIALS}").items()):
        base = rel.rsplit("/", 1)[-1]
        if not (base in RESULT_FILES or f"/{PREDICTIONS}/" in f"/{rel}"):
            continue
        local = storage / name / TRIALS / rel
        if local.is_file() and local.stat().st_size == size:
            continue
        remote.download(f"{name}/{TRIALS}/{rel}", local)
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
        overrides = sample_space(self.study, trial)
        number, seed = trial.number, self.study.seeds[0]
        return {"trial": {"trial_key": f"t{number:03d}/{self.dataset}/seed{seed}",
                          "variant": f"t{number:03d}", "dataset": self.dataset, "seed": seed,
                          "overrides": overrides}}


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
    if options.resume:  # the resume shows on the study's run: how many there were
        tags = tracker.client.get_run(tracker.run_id).data.tags
        tracker.set_tags({RESUMED_TAG: int(tags.get(RESUMED_TAG, "0")) + 1})
    return tracker, uri


def _shareable(uri: str | None) -> str | None:
    if uri is None:
        return None
    from hivg.tracking.mlflow_tracker import shareable_uri

    return shareable_uri(uri)


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
