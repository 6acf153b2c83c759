"""Evaluate a trained checkpoint on a prepared dataset; write predictions, print acc50.

    python pipelines/evaluate.py --checkpoint runs/NAME/checkpoints/best.pt --dataset synthetic
    python pipelines/evaluate.py --checkpoint PATH --dataset refcoco --split testA --storage runs
"""
from __future__ import annotations

import argparse
from pathlib import Path

from hivg.cli import run_main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by train.py")
    p.add_argument("--dataset", required=True, help="a prepared dataset name")
    p.add_argument("--split", action="append", help="split(s) to evaluate (default: all but train)")
    p.add_argument("--storage", default="runs", help="storage holding data/ (default: runs)")
    p.add_argument("--out", help="folder for predictions (default: next to the checkpoint's run)")
    p.add_argument("--device", default="auto")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    from hivg.run_folder import RunFolder
    from hivg.train.inference import evaluate_checkpoint

    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out else \
        RunFolder.of_checkpoint(checkpoint).path / "eval" / args.dataset
    results = evaluate_checkpoint(checkpoint, args.dataset, Path(args.storage) / "data",
                                  args.split, out, args.device)
    print(f"{'split':<10} {'count':>6} {'acc50':>7}")
    for split, r in results.items():
        print(f"{split:<10} {r['count']:>6} {r['acc50']:7.4f}")
        for t, acc in r["by_type"].items():
            print(f"  {t:<14} {acc:.4f}")
        print(f"  right object chosen (box centre inside the target) {r['located']:.4f}; "
              f"acc50 when it is {r['acc50_if_located']:.4f}")
    print(f"predictions: {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
