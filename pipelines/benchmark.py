"""Benchmarks of the HiVG model.

    python pipelines/benchmark.py --model-stats              # HiVG-B/16 and HiVG-L/14
    python pipelines/benchmark.py --model-stats --presets tiny hivg-b16

--model-stats: total and trainable parameters per HiLoRA stage (paper and released policies)
and the forward cost of one image as MACs and FLOPs (torch's flop counter: FLOPs = 2 x MACs),
beside the paper's 38.7 "GFLOPs" for HiVG-B. Random init, batch 1, no grad, CPU.
"""
from __future__ import annotations

import argparse
import time

from hivg.cli import run_main
from hivg.config import load_preset, preset_names

PAPER_GFLOPS = {"hivg-b16": 38.7}  # the paper's table; very likely multiply-adds


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--model-stats", action="store_true",
                      help="parameters per stage and forward MACs/FLOPs per image")
    p.add_argument("--presets", nargs="+", default=["hivg-b16", "hivg-l14"], choices=preset_names(),
                   help="model presets (default: hivg-b16 hivg-l14)")
    return p.parse_args()


def run_model_stats(presets: list[str]) -> None:
    from hivg.model.stats import format_stats, model_stats

    stats = []
    for name in presets:
        t0 = time.perf_counter()
        stats.append(model_stats(load_preset(name), name))
        print(f"{name}: counted in {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print(format_stats(stats, PAPER_GFLOPS))


def main() -> int:
    args = parse_args()
    if args.model_stats:
        run_model_stats(args.presets)
    return 0


if __name__ == "__main__":
    run_main(main)
