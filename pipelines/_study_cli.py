"""What sweep.py and ablate.py share: flags, preparing data and weights, printing results."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def add_study_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default="runs",
                   help="folder for studies, runs, data, caches, or s3://BUCKET/PREFIX "
                        "(credentials from the environment; resumable from any machine)")
    p.add_argument("--name", help="study name (default: the file's `name:` or its stem)")
    p.add_argument("--num-samples", type=int, help="trials per dataset (search spaces)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: what fits)")
    p.add_argument("--workers-per-trial", type=int,
                   help="Ray Train workers per trial; 0 = train in the trial's own process")
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--cpus-per-worker", type=float)
    p.add_argument("--mlflow-uri", help="tracking URI (default: sqlite:///{storage}/mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--address", help="auto or HOST:PORT of a Ray cluster (default: local)")
    p.add_argument("--resume", action="store_true", help="continue the study's Tune state")
    p.add_argument("--datasets", nargs="+", metavar="NAME",
                   help="run only these of the study's datasets (or all)")
    p.add_argument("--skip-missing", action="store_true",
                   help="run the prepared datasets, leave out the rest (said under the table)")


def prepare(study, storage: Path, log=print, args=None):
    """The datasets that run (--datasets, --skip-missing), synthetic data and the tiny CLIP's
    weights made once, before any trial starts. Returns (study, hivg DatasetPlan)."""
    from hivg.cli import with_storage_defaults
    from hivg.data.manifest import list_splits
    from hivg.data.prepare import ensure_synthetic
    from hivg.orchestration.study_datasets import plan_datasets
    from hivg.train.fit import preflight
    from hivg.train.pretrain import resolve_weights

    base = with_storage_defaults(study.base, storage)
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


def options_from(args, **extra):
    from hivg.orchestration.tune import StudyOptions

    return StudyOptions(name=args.name, num_samples=getattr(args, "num_samples", None),
                        max_concurrent=args.max_concurrent,
                        workers_per_trial=args.workers_per_trial,
                        gpus_per_worker=args.gpus_per_worker,
                        cpus_per_worker=args.cpus_per_worker, mlflow_uri=args.mlflow_uri,
                        mlflow=not args.no_mlflow, address=args.address, resume=args.resume,
                        **extra)


def print_results(table: dict, storage: Path, remote=None, plan=None) -> None:
    from hivg.orchestration.tune import format_table, push_study_files

    print()
    print(format_table(table))
    if plan is not None and plan.note:
        print(plan.note)
    where = remote.url(table["study"]) if remote else storage / table["study"]
    print(f"study: {where}  ({len(table['trials'])} finished trials, "
          f"{table['wall_time_s']:.0f}s)")
    if table.get("mlflow_ui"):
        print(f"compare runs: {table['mlflow_ui']}")
    from hivg.orchestration.report import report_after_study
    report_after_study(table, storage)  # report.md, tables, plots; a failure only warns
    if remote:
        push_study_files(remote, storage, table["study"], report_only=True)
        print(f"pushed to {where} (local mirror {storage / table['study']})")
