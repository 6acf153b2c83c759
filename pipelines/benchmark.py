"""Benchmarks of the HiVG model.

    python pipelines/benchmark.py --model-stats              # HiVG-B/16 and HiVG-L/14
    python pipelines/benchmark.py --model-stats --presets tiny hivg-b16

--model-stats: total and trainable parameters per HiLoRA stage (paper and released policies)
and the forward cost of one image as MACs and FLOPs (torch's flop counter: FLOPs = 2 x MACs),
beside the paper's 38.7 "GFLOPs" for HiVG-B. Random init, batch 1, no grad, CPU.

    python pipelines/benchmark.py --orchestration-overhead   # plain local run vs Ray Train

--orchestration-overhead: the tiny model on a small synthetic set, trained the same way as
a plain local run and on one Ray Train worker with the same number of compute threads, in
one invocation: per-epoch times side by side and their ratio, and the start-up from the
call to the first training step, broken down (Ray init, controller + worker start, imports,
model build + data, stage-start evaluation).
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
    mode.add_argument("--orchestration-overhead", action="store_true",
                      help="per-epoch time and start-up: local run vs one Ray Train worker")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (overhead benchmark)")
    p.add_argument("--threads", type=int, default=2, help="compute threads in both runs")
    p.add_argument("--train-samples", type=int, default=1200)
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


class _MarkHooks:
    """Local TrainHooks that timestamp the start-up milestones."""

    def __new__(cls, marks: dict):
        from hivg.train.hooks import TrainHooks

        class Hooks(TrainHooks):
            def mark(self, event: str) -> None:
                marks.setdefault(event, time.time())

        return Hooks()


def run_orchestration_overhead(epochs: int, threads: int, train_samples: int) -> None:
    import json
    import statistics
    import tempfile
    from pathlib import Path

    import torch

    from hivg.data.prepare import prepare_synthetic
    from hivg.orchestration import ray_train
    from hivg.orchestration.run import prepare_run_folder
    from hivg.train.fit import fit

    storage = Path(tempfile.mkdtemp(prefix="hivg-overhead-"))
    prepare_synthetic(storage, seed=0, sizes={"train": train_samples, "val": 200, "test": 200})
    stages = load_preset("tiny").hilora.stages
    config = load_preset("tiny").replace({
        "model.weights": None, "data.data_dir": str(storage / "data"), "data.num_workers": 0,
        f"hilora.stages.{stages[0].name}.epochs": epochs,
        **{f"hilora.stages.{s.name}.epochs": 0 for s in stages[1:]}})

    def epoch_times(run_dir: Path) -> list[float]:
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r["time/epoch_s"] for r in rows if r["epoch"] > 0]

    torch.set_num_threads(threads)
    print(f"local run: {epochs} epochs of {train_samples} samples, {threads} threads", flush=True)
    marks: dict = {}
    local_dir = storage / "local"
    t_call = time.time()
    fit(config, local_dir, hooks=_MarkHooks(marks), log=lambda _m: None, show_progress=False)
    local = epoch_times(local_dir)

    print(f"Ray Train: 1 worker x {threads} CPUs (threads), same config", flush=True)
    t0 = time.time()
    ray_train.connect(None, num_cpus=threads + 1, log=lambda _m: None)
    t_ray = time.time()
    ray_dir = storage / "ray"
    prepare_run_folder(config, ray_dir, resume=False)
    timing = storage / "ray-marks.jsonl"
    t_fit = time.time()
    ray_train.train_on_ray(config, ray_dir, ray_train.RayResources(1, 0.0, float(threads)),
                           timing=str(timing), ray_storage=storage / ".ray-train")
    ray_marks: dict = {}
    for line in timing.read_text().splitlines():
        m = json.loads(line)
        ray_marks.setdefault(m["event"], m["time"])
    remote = epoch_times(ray_dir)

    med_local, med_ray = statistics.median(local), statistics.median(remote)
    print()
    print("per-epoch time (s)      " + "  ".join(f"e{i + 1}" for i in range(epochs)) + "   median")
    print(f"  local ({threads} threads)     " + "  ".join(f"{x:4.1f}" for x in local)
          + f"   {med_local:.2f}")
    print(f"  Ray Train (1 worker)  " + "  ".join(f"{x:4.1f}" for x in remote)
          + f"   {med_ray:.2f}")
    print(f"  ratio Ray / local: {med_ray / med_local:.3f}  (target <= 1.05)")
    print()
    print("start-up, seconds to the first training step")
    print(f"  local: fit() -> setup done {marks['setup_done'] - t_call:.1f}, "
          f"-> first step {marks['first_epoch'] - t_call:.1f}")
    parts = [("Ray init", t_ray - t0),
             ("controller + worker start", ray_marks["worker_started"] - t_fit),
             ("imports in the worker", ray_marks["imports_done"] - ray_marks["worker_started"]),
             ("model build + data", ray_marks["setup_done"] - ray_marks["imports_done"]),
             ("stage-start evaluation", ray_marks["first_epoch"] - ray_marks["setup_done"])]
    for name, value in parts:
        print(f"  Ray: {name:<28} {value:5.1f}")
    total = ray_marks["first_epoch"] - t0
    fixed = total - (marks["first_epoch"] - t_call)
    print(f"  Ray: total from connect to first step {total:.1f}; "
          f"beyond the local run's start-up {fixed:.1f} (target <= 12)")


def main() -> int:
    args = parse_args()
    if args.model_stats:
        run_model_stats(args.presets)
    if args.orchestration_overhead:
        run_orchestration_overhead(args.epochs, args.threads, args.train_samples)
    return 0


if __name__ == "__main__":
    run_main(main)
