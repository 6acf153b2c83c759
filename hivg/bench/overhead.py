"""`benchmark.py --orchestration-overhead`: the tiny model on a small synthetic set, trained
the same way as a plain local run and on one Ray Train worker with the same number of compute
threads, in one invocation: per-epoch times side by side and their ratio, and the start-up
from the call to the first training step, broken down (Ray init, controller + worker start,
imports, model build + data, stage-start evaluation)."""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from hivg.config import Config, load_preset
from hivg.run_folder import RunFolder


class _MarkHooks:
    """Local TrainHooks that timestamp the start-up milestones."""

    def __new__(cls, marks: dict):
        from hivg.train.hooks import TrainHooks

        class Hooks(TrainHooks):
            def mark(self, event: str) -> None:
                marks.setdefault(event, time.time())

        return Hooks()


def run_orchestration_overhead(epochs: int, threads: int, train_samples: int,
                               address: str | None = None) -> None:
    import torch

    from hivg.data.prepare import prepare_synthetic
    from hivg.orchestration import ray_train
    from hivg.orchestration.resources import Resources
    from hivg.train.fit import fit

    storage = Path(tempfile.mkdtemp(prefix="hivg-overhead-"))
    prepare_synthetic(storage, seed=0, sizes={"train": train_samples, "val": 200, "test": 200})
    config = _one_stage(load_preset("tiny"), storage, epochs)

    torch.set_num_threads(threads)
    print(f"local run: {epochs} epochs of {train_samples} samples, {threads} threads", flush=True)
    marks: dict = {}
    t_call = time.time()
    fit(config, storage / "local", hooks=_MarkHooks(marks), log=lambda _m: None,
        show_progress=False)

    print(f"Ray Train: 1 worker x {threads} CPUs (threads), same config", flush=True)
    t0 = time.time()
    ray_train.connect(address, num_cpus=None if address else threads + 1, log=lambda _m: None)
    t_ray = time.time()
    ray = RunFolder(storage / "ray")
    ray.prepare(config.to_yaml(), resume=False)
    timing = storage / "ray-marks.jsonl"
    t_fit = time.time()
    ray_train.train_on_ray(config, ray.path, Resources(1, float(threads)), timing=str(timing),
                           ray_storage=storage / ".ray-train")
    ray_marks: dict = {}
    for line in timing.read_text().splitlines():
        m = json.loads(line)
        ray_marks.setdefault(m["event"], m["time"])

    _print_epochs(_epoch_times(RunFolder(storage / "local")), _epoch_times(ray), threads)
    print("start-up, seconds to the first training step")
    print(f"  local: fit() -> setup done {marks['setup_done'] - t_call:.1f}, "
          f"-> first step {marks['first_epoch'] - t_call:.1f}")
    parts = [("Ray init" if not address else f"join cluster {address}", t_ray - t0),
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


def _one_stage(tiny: Config, storage: Path, epochs: int) -> Config:
    """The tiny preset, random init, training only its first stage for `epochs`."""
    stages = tiny.hilora.stages
    return tiny.replace({
        "model.weights": None, "data.data_dir": str(storage / "data"), "data.num_workers": 0,
        f"hilora.stages.{stages[0].name}.epochs": epochs,
        **{f"hilora.stages.{s.name}.epochs": 0 for s in stages[1:]}})


def _epoch_times(folder: RunFolder) -> list[float]:
    return [r["time/epoch_s"] for r in folder.read_metrics() if r["epoch"] > 0]


def _print_epochs(local: list[float], remote: list[float], threads: int) -> None:
    med_local, med_ray = statistics.median(local), statistics.median(remote)
    print()
    print("per-epoch time (s)      " + "  ".join(f"e{i + 1}" for i in range(len(local)))
          + "   median")
    print(f"  local ({threads} threads)     " + "  ".join(f"{x:4.1f}" for x in local)
          + f"   {med_local:.2f}")
    print("  Ray Train (1 worker)  " + "  ".join(f"{x:4.1f}" for x in remote)
          + f"   {med_ray:.2f}")
    print(f"  ratio Ray / local: {med_ray / med_local:.3f}  (target <= 1.05)")
    print()
