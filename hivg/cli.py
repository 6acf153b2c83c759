"""What the pipelines share: exit codes, config and storage resolution, run names, the study
flags of ablate.py and sweep.py, and printing results."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from hivg.cli_args import add_dry_run, add_mlflow_uri
from hivg.config import Config, ConfigError, load_config, load_preset
from hivg.errors import UserError
from hivg.run_folder import SELECTION_METRIC, config_digest

EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2
# On a cluster every node has HIVG_STORAGE (cluster.yaml): jobs need no --storage there.
STORAGE_ENV = "HIVG_STORAGE"


def default_storage() -> str:
    return os.environ.get(STORAGE_ENV) or "runs"


def run_main(main: Callable[[], int | None]) -> None:
    """Exit 0 on success, 2 with one line on a user error, 1 with a traceback otherwise."""
    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception:
        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)
    sys.exit(code or EXIT_OK)


def resolve_config(config_file: str | None, preset: str, overrides: list[str]) -> Config:
    config = load_config(config_file) if config_file else load_preset(preset)
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"{text!r}: expected a key=value override after the flags")
    return config.replace(overrides) if overrides else config


def with_storage_defaults(config: Config, storage: Path) -> Config:
    if config.data.data_dir is None:
        config = config.replace({"data.data_dir": str((storage / "data").resolve())})
    return config


def default_run_name(config: Config) -> str:
    """Readable and deterministic (never a timestamp): preset, dataset, variant, seed, hash."""
    return (f"{config.preset}-{config.data.dataset}-{config.variant}-seed{config.seed}-"
            f"{config_digest(config)}")


def train_command(args: argparse.Namespace) -> int:
    """pipelines/train.py: resolve the config in its storage (a folder, or the S3 mirror),
    make the synthetic data and the tiny CLIP's weights when needed, check everything that
    needs no training, train (here or on Ray Train workers) and print the summary."""
    from hivg.checks import check_train_args, check_train_services
    from hivg.config import to_overrides

    config = check_train_args(args)
    if args.dry_run:
        print("\n".join(to_overrides(config)))
        return 0
    check_train_services(args, config)
    from hivg.data.manifest import list_splits
    from hivg.data.prepare import ensure_synthetic
    from hivg.orchestration.remote_stage_cache import stage_cache_for
    from hivg.orchestration.remote_storage import open_storage
    from hivg.orchestration.resources import LOCAL, Resources
    from hivg.orchestration.run import TrackingOptions, run_training
    from hivg.train.fit import preflight
    from hivg.train.pretrain import resolve_weights

    remote = open_storage(args.storage)
    if remote:
        remote.check()  # before any data, weights or training
    # Data, weights and run folders are local files: the folder itself, or the S3 mirror.
    storage = remote.mirror if remote else Path(args.storage)
    if config.data.dataset == "synthetic" and not list_splits(config.data.data_dir, "synthetic"):
        ensure_synthetic(storage, seed=0, log=print)
    preflight(config, log=print)  # a bad config fails here, before data or weights are made
    config = resolve_weights(config, storage, log=print)
    name = args.name or default_run_name(config)
    run_dir = storage / name
    where = remote.url(name) if remote else run_dir
    print(f"run: {where}" + (f" (local mirror {run_dir})" if remote else ""))
    storage_arg = remote.uri if remote else storage  # what the driver and the cache are given
    resources = LOCAL if args.workers is None else \
        Resources(args.workers, args.cpus_per_worker, args.gpus_per_worker)
    summary = run_training(
        config, storage_arg, run_dir, resume=args.resume, show_progress=not args.quiet,
        tracking=TrackingOptions(enabled=not args.no_mlflow, uri=args.mlflow_uri,
                                 experiment=args.experiment, log_model=args.log_model),
        resources=resources, address=args.address, max_failures=args.max_failures,
        stage_cache=None if args.no_stage_cache else stage_cache_for(storage_arg, log=print))
    print_run_summary(summary, Path(config.data.data_dir) / config.data.dataset)
    print(f"results: {where}")
    if summary.get("mlflow_ui"):
        print(f"compare runs: {summary['mlflow_ui']}")
    return 0


def print_run_summary(summary: dict[str, Any], dataset_dir: Path) -> None:
    """acc50 per split (and per expression type) beside the dataset's trivial baselines."""
    baselines_file = dataset_dir / "baselines.json"
    baselines = json.loads(baselines_file.read_text()) if baselines_file.is_file() else {}
    names = sorted(baselines)
    print(f"{'split':<10} {'acc50':>7}" + "".join(f" {n:>12}" for n in names))
    for split, result in summary["splits"].items():
        line = f"{split:<10} {result['acc50']:7.4f}"
        for n in names:
            v = baselines[n].get(split) if isinstance(baselines[n], dict) else None
            line += f" {v:12.4f}" if isinstance(v, (int, float)) else f" {'-':>12}"
        print(line)
        for t, acc in result["by_type"].items():
            print(f"  {t:<14} {acc:.4f}")
    best = summary["best"]
    print(f"selected: {best.get('stage')} epoch {best.get('epoch')} "
          f"({SELECTION_METRIC} {best.get(SELECTION_METRIC, float('nan')):.4f}); "
          f"wall time {summary['wall_time_s']:.0f}s")


# ----------------------------------------------------------------------------- studies
def add_study_flags(p: argparse.ArgumentParser) -> None:
    """The flags ablate.py and sweep.py share."""
    p.add_argument("--storage", default=default_storage(),
                   help="folder for studies, runs, data, caches, or s3://BUCKET/PREFIX "
                        "(default: $HIVG_STORAGE, else ./runs; credentials from the "
                        "environment; resumable from any machine)")
    p.add_argument("--name", help="study name (default: the file's `name:` or its stem)")
    p.add_argument("--max-concurrent", type=int, help="trials at once, >= 1 (default: what "
                   "fits)")
    p.add_argument("--workers-per-trial", type=int,
                   help="Ray Train workers per trial; 0 = train in the trial's own process "
                        "(default: the file's resources.workers)")
    p.add_argument("--gpus-per-worker", type=float,
                   help="GPUs per worker, >= 0 (default: the file's resources)")
    p.add_argument("--cpus-per-worker", type=float,
                   help="CPUs per worker, > 0 (default: the file's resources)")
    add_mlflow_uri(p)
    p.add_argument("--no-mlflow", action="store_true", help="record nothing in MLflow")
    add_dry_run(p, "the study's trials and their configs")
    p.add_argument("--address", help="auto or HOST:PORT of a Ray cluster (default: "
                   "$RAY_ADDRESS, as in a Ray job, else a local one)")
    p.add_argument("--resume", action="store_true", help="continue the study's Tune state")
    p.add_argument("--datasets", nargs="+", metavar="NAME",
                   help="run only these of the study's datasets (or all)")
    p.add_argument("--skip-missing", action="store_true",
                   help="run the prepared datasets, leave out the rest (said under the table)")
    p.add_argument("--list", action="store_true",
                   help="list the studies under --storage (trials finished, errored, started, "
                        "pending; best so far) and exit")


def run_study_command(path: str | None, kind: str, args: argparse.Namespace, **options: Any) -> int:
    """ablate.py (kind variants) and sweep.py (kind space): load and check the study file,
    make data and weights once, run every trial, print the table and write the report."""
    if getattr(args, "list", False):
        from hivg.orchestration.study_list import list_command

        return list_command(args.storage)
    if path is None:
        raise UserError("expected a study file (or --list)")
    from hivg.checks import check_study_args, check_study_services
    from hivg.orchestration.search_space import load_study

    check_study_args(args, kind)
    study = load_study(Path(path))
    if study.kind != kind:
        raise UserError(f"{path}: a search space; run it with pipelines/sweep.py"
                        if kind == "variants" else
                        f"{path}: an ablation study (variants); run it with pipelines/ablate.py")
    if args.dry_run:
        from hivg.orchestration.study_plan import print_study_plan

        print_study_plan(study, name=args.name, num_samples=getattr(args, "num_samples", None),
                         grid=options.get("grid", False))
        return 0
    check_study_services(args, kind)
    from hivg.orchestration.tune import run_study, study_storage

    storage, remote = study_storage(args.storage)
    study, plan = prepare_study(study, storage, args=args)
    results = run_study(study, args.storage, study_options(args, **options))
    print_study_results(results, storage, remote, plan)
    return 0


def prepare_study(study, storage: Path, log: Callable[[str], None] = print, args=None):
    """The datasets that run (--datasets, --skip-missing), synthetic data and the tiny CLIP's
    weights made once, before any trial starts. Returns (study, its DatasetPlan)."""
    from hivg.data.manifest import list_splits
    from hivg.data.prepare import ensure_synthetic
    from hivg.orchestration.study_datasets import plan_datasets
    from hivg.train.fit import preflight
    from hivg.train.pretrain import resolve_weights

    base = with_storage_defaults(study.base, storage)
    fetch_shared_inputs(study, base, getattr(args, "storage", storage))
    study, plan = plan_datasets(study, base.data.data_dir, getattr(args, "storage", storage),
                                requested=getattr(args, "datasets", None),
                                skip_missing=getattr(args, "skip_missing", False))
    if plan.note:
        log(plan.note)
    if "synthetic" in study.datasets and not list_splits(base.data.data_dir, "synthetic"):
        ensure_synthetic(storage, seed=0, log=log)
    for dataset in study.datasets:
        preflight(base.replace({"data.dataset": dataset}), log=log)
    return dataclasses.replace(study, base=resolve_weights(base, storage, log=log)), plan


def fetch_shared_inputs(study, base, storage) -> None:
    """S3 storage: the data and weights an earlier run shared in the bucket, into this
    machine's mirror (a resume from another machine starts with an empty one), so that they
    are not made again here, perhaps differently."""
    from hivg.orchestration.remote_storage import open_storage

    remote = open_storage(storage)
    if remote is None:
        return
    from hivg.orchestration.node_inputs import fetch_inputs

    for dataset in study.datasets:
        fetch_inputs(base.replace({"data.dataset": dataset}), remote)


def study_options(args: argparse.Namespace, **extra: Any):
    from hivg.orchestration.tune import StudyOptions

    return StudyOptions(name=args.name, num_samples=getattr(args, "num_samples", None),
                        max_concurrent=args.max_concurrent,
                        workers_per_trial=args.workers_per_trial,
                        gpus_per_worker=args.gpus_per_worker,
                        cpus_per_worker=args.cpus_per_worker, mlflow_uri=args.mlflow_uri,
                        mlflow=not args.no_mlflow, address=args.address, resume=args.resume,
                        **extra)


def print_study_results(results: dict[str, Any], storage: Path, remote=None,
                        plan=None) -> None:
    """The study's table, where it lies, the MLflow command; then its report (a failure
    there only warns: the results are safe)."""
    from hivg.orchestration.study_report import report_after_study
    from hivg.orchestration.tune import push_study_files

    name = results["study"]
    print()
    print((storage / name / "table.md").read_text())
    if plan is not None and plan.note:
        print(plan.note)
    where = remote.url(name) if remote else storage / name
    print(f"study: {where}  ({len(results['trials'])} finished trials, "
          f"{results['wall_time_s']:.0f}s)")
    if results.get("mlflow_ui"):
        print(f"compare runs: {results['mlflow_ui']}")
    report_after_study(results, storage)
    if remote:
        push_study_files(remote, storage, name, report_only=True)
        print(f"pushed to {where} (local mirror {storage / name})")
