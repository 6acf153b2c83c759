"""Train HiVG through every HiLoRA stage.

    python pipelines/train.py                         # tiny model on the synthetic benchmark
    python pipelines/train.py --config hivg/configs/hivg-b16.yaml model.weights=PATH data.dataset=refcoco
    python pipelines/train.py --name my-run --resume  # continue an interrupted run
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hivg.cli import default_run_name, resolve_config, run_main, with_storage_defaults
from hivg.config import preset_names


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", help="YAML config file (may start from `preset: NAME`)")
    p.add_argument("--preset", default="tiny", choices=preset_names(),
                   help="preset when no --config is given (default: tiny)")
    p.add_argument("--storage", default="runs", help="folder for runs, data and caches")
    p.add_argument("--name", help="run name (default: derived from the config)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. optim.weight_decay=0.01")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    storage = Path(args.storage)
    config = with_storage_defaults(resolve_config(args.config, args.preset, args.overrides), storage)

    from hivg.data.manifest import list_splits
    from hivg.data.prepare import ensure_synthetic
    from hivg.train.fit import fit, preflight
    from hivg.train.pretrain import resolve_weights

    if config.data.dataset == "synthetic" and not list_splits(config.data.data_dir, "synthetic"):
        ensure_synthetic(storage, seed=0, log=print)
    preflight(config)  # a bad config fails here, before data or weights are made
    config = resolve_weights(config, storage, log=print)
    name = args.name or default_run_name(config)
    run_dir = storage / name
    print(f"run: {run_dir}")
    summary = fit(config, run_dir, resume=args.resume, show_progress=not args.quiet)
    print_summary(summary, Path(config.data.data_dir) / config.data.dataset)
    print(f"results: {run_dir}")
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
