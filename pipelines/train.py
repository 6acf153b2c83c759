"""Train HiVG through every HiLoRA stage.

    python pipelines/train.py                         # tiny model on the synthetic benchmark
    python pipelines/train.py --config hivg/configs/hivg-b16.yaml model.weights=PATH data.dataset=refcoco
    python pipelines/train.py --name my-run --resume  # continue an interrupted run
    python pipelines/train.py --workers 2             # the same run on 2 Ray Train workers
    python pipelines/train.py --workers 8 --gpus-per-worker 1 --address auto --storage /shared/runs
    python pipelines/train.py --storage s3://bucket/prefix   # run folders on S3 (env credentials)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hivg.cli import (default_run_name, default_storage, resolve_config, run_main,
                      with_storage_defaults)
from hivg.config import preset_names
from hivg.errors import UserError


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", help="YAML config file (may start from `preset: NAME`)")
    p.add_argument("--preset", default="tiny", choices=preset_names(),
                   help="preset when no --config is given (default: tiny)")
    p.add_argument("--storage", default=default_storage(),
                   help="folder for runs, data and caches, or s3://BUCKET/PREFIX (default: "
                   "$HIVG_STORAGE, else ./runs; credentials from the environment; local files in "
                   "$HIVG_MIRROR_DIR, default ~/.cache/hivg/mirror)")
    p.add_argument("--name", help="run name (default: derived from the config)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    ray = p.add_argument_group("Ray Train (without --workers: a plain local run)")
    ray.add_argument("--workers", type=int, help="number of Ray Train workers (DDP)")
    ray.add_argument("--gpus-per-worker", type=float, default=0.0)
    ray.add_argument("--cpus-per-worker", type=float, default=1.0)
    ray.add_argument("--address", help="auto or HOST:PORT of a running Ray cluster "
                     "(default: start a local one)")
    ray.add_argument("--max-failures", type=int, default=0,
                     help="restart the worker group this many times after a worker dies")
    ml = p.add_argument_group("MLflow")
    ml.add_argument("--mlflow-uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else "
                    "sqlite:///{storage}/mlflow.db)")
    ml.add_argument("--experiment", help="MLflow experiment (default: the preset name)")
    ml.add_argument("--log-model", action="store_true", help="log the best checkpoint")
    ml.add_argument("--no-mlflow", action="store_true", help="record nothing in MLflow")
    ml.add_argument("--no-stage-cache", action="store_true",
                    help="train every stage even when the stage cache has it")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. optim.weight_decay=0.01")
    return p.parse_intermixed_args()  # key=value overrides may sit between the flags


def main() -> int:
    args = parse_args()
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers: expected an integer >= 1, got {args.workers}")
    from hivg.orchestration.remote_storage import open_storage

    remote = open_storage(args.storage)
    if remote:
        remote.check()  # before any data, weights or training
    # Data, weights and run folders are local files: the folder itself, or the S3 mirror.
    storage = remote.mirror if remote else Path(args.storage)
    config = with_storage_defaults(resolve_config(args.config, args.preset, args.overrides), storage)

    from hivg.data.manifest import list_splits
    from hivg.data.prepare import ensure_synthetic
    from hivg.orchestration.remote_stage_cache import stage_cache_for
    from hivg.orchestration.run import DistributedOptions, TrackingOptions, run_training
    from hivg.train.fit import preflight
    from hivg.train.pretrain import resolve_weights

    if config.data.dataset == "synthetic" and not list_splits(config.data.data_dir, "synthetic"):
        ensure_synthetic(storage, seed=0, log=print)
    preflight(config)  # a bad config fails here, before data or weights are made
    config = resolve_weights(config, storage, log=print)
    name = args.name or default_run_name(config)
    run_dir = storage / name
    where = remote.url(name) if remote else run_dir
    print(f"run: {where}" + (f" (local mirror {run_dir})" if remote else ""))
    storage_arg = remote.uri if remote else storage  # what the driver and the cache are given
    summary = run_training(
        config, storage_arg, run_dir, resume=args.resume, show_progress=not args.quiet,
        tracking=TrackingOptions(enabled=not args.no_mlflow, uri=args.mlflow_uri,
                                 experiment=args.experiment, log_model=args.log_model),
        distributed=DistributedOptions(workers=args.workers,
                                       gpus_per_worker=args.gpus_per_worker,
                                       cpus_per_worker=args.cpus_per_worker,
                                       address=args.address, max_failures=args.max_failures),
        stage_cache=None if args.no_stage_cache else stage_cache_for(storage_arg, log=print))
    print_summary(summary, Path(config.data.data_dir) / config.data.dataset)
    print(f"results: {where}")
    if summary.get("mlflow_ui"):
        print(f"compare runs: {summary['mlflow_ui']}")
    return 0


def print_summary(summary: dict, dataset_dir: Path) -> None:
    baselines_file = dataset_dir / "baselines.json"
    baselines = json.loads(baselines_file.read_text()) if baselines_file.is_file() else {}
    names = sorted(baselines)
    header = f"{'split':<10} {'acc50':>7}" + "".join(f" {n:>12}" for n in names)
    print(header)
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
          f"(val/acc50 {best.get('val/acc50', float('nan')):.4f}); "
          f"wall time {summary['wall_time_s']:.0f}s")


if __name__ == "__main__":
    run_main(main)
