"""`benchmark.py --model-stats`: total and trainable parameters per HiLoRA stage (paper and
released policies) and the forward cost of one image as MACs and FLOPs (torch's flop counter:
FLOPs = 2 x MACs), beside the paper's 38.7 "GFLOPs" for HiVG-B. Random init, batch 1, CPU."""
from __future__ import annotations

import time

from hivg.config import load_preset

PAPER_GFLOPS = {"hivg-b16": 38.7}  # the paper's table; very likely multiply-adds


def run_model_stats(presets: list[str]) -> None:
    from hivg.model.stats import format_stats, model_stats

    stats = []
    for name in presets:
        t0 = time.perf_counter()
        stats.append(model_stats(load_preset(name), name))
        print(f"{name}: counted in {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print(format_stats(stats, PAPER_GFLOPS))
