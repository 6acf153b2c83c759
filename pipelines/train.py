"""Train HiVG through every HiLoRA stage.

    python pipelines/train.py                         # tiny model on the synthetic benchmark
    python pipelines/train.py --config hivg/configs/hivg-b16.yaml data.dataset=refcoco   # from OpenAI's CLIP
    python pipelines/train.py --preset hivg-b16 model.weights=PATH data.dataset=refcoco   # docs/weights.md
    python pipelines/train.py --name my-run --resume  # continue an interrupted run
    python pipelines/train.py --workers 2             # the same run on 2 Ray Train workers
    python pipelines/train.py --workers 8 --gpus-per-worker 1 --address auto --storage /shared/runs
    python pipelines/train.py --storage s3://bucket/prefix   # run folders on S3 (env credentials)
    python pipelines/train.py --dry-run hilora.num_stages=2  # the resolved config as overrides

The run's seed (initialisation, data order, augmentation) is the override seed=N.
"""
from __future__ import annotations

from hivg.cli import default_storage, run_main, train_command
from hivg.cli_args import Parser, add_dry_run, add_mlflow_uri
from hivg.config import preset_names


def parse_args():
    p = Parser(description=__doc__)
    p.add_argument("--config", help="YAML config file (may start from `preset: NAME`)")
    p.add_argument("--preset", default="tiny", choices=preset_names(),
                   help="preset when no --config is given (default: tiny)")
    p.add_argument("--storage", default=default_storage(),
                   help="folder for runs, data and caches, or s3://BUCKET/PREFIX (default: "
                   "$HIVG_STORAGE, else ./runs; credentials from the environment; local files "
                   "in $HIVG_MIRROR_DIR, default ~/.cache/hivg/mirror)")
    p.add_argument("--name", help="run name (default: derived from the config)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dry_run(p, "the resolved config (as key=value overrides)")
    ray = p.add_argument_group("Ray Train (without --workers: a plain local run)")
    ray.add_argument("--workers", type=int, help="number of Ray Train workers (DDP)")
    ray.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker")
    ray.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (> 0)")
    ray.add_argument("--address", help="auto or HOST:PORT of a running Ray cluster "
                     "(default: $RAY_ADDRESS, as in a Ray job, else start a local one)")
    ray.add_argument("--max-failures", type=int, default=0,
                     help="restart the worker group this many times after a worker dies")
    ml = p.add_argument_group("MLflow")
    add_mlflow_uri(ml)
    ml.add_argument("--experiment", help="MLflow experiment (default: the preset name)")
    ml.add_argument("--log-model", action="store_true", help="log the best checkpoint")
    ml.add_argument("--no-mlflow", action="store_true", help="record nothing in MLflow")
    ml.add_argument("--no-stage-cache", action="store_true",
                    help="train every stage even when the stage cache has it")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. "
                   "optim.weight_decay=0.01 seed=1 (--dry-run prints them all)")
    return p.parse_intermixed_args()  # key=value overrides may sit between the flags


if __name__ == "__main__":
    run_main(lambda: train_command(parse_args()))
