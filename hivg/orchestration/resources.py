"""What a run asks Ray for, and whether the cluster can hold it.

One type for a training run (`pipelines/train.py --workers`), a study trial (a study file's
`resources:` and the study flags) and the Ray Train worker group they start.
"""
from __future__ import annotations

from dataclasses import dataclass

from hivg.errors import UserError

# A trial whose training runs on its own Ray Train workers holds this much CPU itself.
TRIAL_DRIVER_CPU = 0.25


@dataclass(frozen=True)
class Resources:
    """`workers` Ray Train workers with `cpus_per_worker` CPUs and `gpus_per_worker` GPUs
    each. workers 0: no worker group; the run trains in the calling process (a plain local
    run, or a study trial in its own Tune process, which saves a worker group's start-up)."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    @property
    def on_workers(self) -> bool:
        return self.workers > 0

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def cpus(self) -> float:
        """CPUs that compute (the trial's own process counts as one worker)."""
        return max(self.workers, 1) * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return max(self.workers, 1) * self.gpus_per_worker

    def trial_bundle(self) -> dict[str, float]:
        """What Tune reserves for a trial's own process: everything when it trains there, a
        fraction of a CPU when it only drives its workers (they reserve their own)."""
        if self.on_workers:
            return {"CPU": TRIAL_DRIVER_CPU}
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.use_gpu else {})}


LOCAL = Resources(workers=0)


def check_run_fits(resources: Resources, cluster: dict[str, float]) -> None:
    """UserError (the train.py flags) when the cluster cannot hold the worker group."""
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if resources.gpus > gpus:
        raise UserError(f"--workers {resources.workers} x --gpus-per-worker "
                        f"{resources.gpus_per_worker:g}: asked for {resources.gpus:g} GPUs, the "
                        f"cluster has {gpus:g}")
    if resources.cpus > cpus:
        raise UserError(f"--workers {resources.workers}: asked for {resources.cpus:g} CPUs "
                        f"({resources.cpus_per_worker:g} per worker), the cluster has {cpus:g}")


def concurrent_trials(resources: Resources, cluster: dict[str, float], reserved_cpu: float,
                      limit: int | None) -> int:
    """How many trials run at once: `limit`, else what the cluster's CPUs (less
    `reserved_cpu`) and GPUs hold. UserError when not even one trial fits."""
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    need_cpu = resources.cpus + (TRIAL_DRIVER_CPU if resources.on_workers else 0.0)
    if need_cpu > cpus or resources.gpus > gpus:
        raise UserError(f"a trial needs {need_cpu:g} CPUs and {resources.gpus:g} GPUs; the "
                        f"cluster has {cpus:g} CPUs and {gpus:g} GPUs")
    concurrent = limit if limit is not None else \
        max(1, int((cpus - reserved_cpu) // resources.cpus))
    if resources.use_gpu:
        concurrent = min(concurrent, max(1, int(gpus // resources.gpus)))
    return concurrent
