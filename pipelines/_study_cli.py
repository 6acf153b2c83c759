"""What sweep.py and ablate.py share: flags, preparing data and weights, printing results."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from hivg.cli import default_storage


def add_study_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=default_storage(),
                   help="folder for studies, runs, data, caches, or s3://BUCKET/PREFIX "
                        "(default: $HIVG_STORAGE, else ./runs; credentials from the environment; resumable from any machine)")
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


def prepare(study, storage: Path, log=print):
    """Synthetic data and the tiny CLIP's weights made once, before any trial starts."""
    from hivg.cli import with_storage_defaults
    from hivg.data.manifest import list_splits
    from hivg.data.prepare import ensure_synthetic
    from hivg.train.fit import preflight
    from hivg.train.pretrain import resolve_weights

    base = with_storage_defaults(study.base, storage)
    if "synthetic" in study.datasets and not list_splits(base.data.data_dir, "synthetic"):
        ensure_synthetic(storage, seed=0, log=log)
    for dataset in study.datasets:
        preflight(base.replace({"data.dataset": dataset}))
    return dataclasses.replace(study, base=resolve_weights(base, storage, log=log))


def options_from(args, **extra):
    from hivg.orchestration.tune import StudyOptions

    return StudyOptions(name=args.name, num_samples=getattr(args, "num_samples", None),
                        max_concurrent=args.max_concurrent,
                        workers_per_trial=args.workers_per_trial,
                        gpus_per_worker=args.gpus_per_worker,
                        cpus_per_worker=args.cpus_per_worker, mlflow_uri=args.mlflow_uri,
                        mlflow=not args.no_mlflow, address=args.address, resume=args.resume,
                        **extra)


def print_results(table: dict, storage: Path, remote=None) -> None:
    from hivg.orchestration.tune import format_table, push_study_files

    print()
    print(format_table(table))
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
