"""One HiVG run spread over Ray Train workers (Ray 2.60, Train V2).

The worker function runs the same `hivg.train.fit` as a local run; Ray enters only through
`RayHooks` (DDP model, distributed sampler, exact sharded evaluation, report). The driver
owns the run folder's creation and the MLflow run's lifecycle; rank 0 writes the folder.

Failure handling: every epoch rank 0 writes `last.pt` into the run folder and reports a
small pointer checkpoint to Ray. When a worker dies, Ray restarts the group (up to
`max_failures` times) and the worker function resumes from `last.pt`: `metrics.jsonl`
is truncated to that position first, so no epoch is logged twice.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler

from hivg.config import Config
from hivg.errors import UserError
from hivg.orchestration.resources import Resources
from hivg.run_folder import RunFolder
from hivg.train.hooks import Tracker, TrainHooks


class RayHooks(TrainHooks):
    """TrainHooks inside a Ray Train worker: DDP over the process group Ray set up."""

    def __init__(self, timing_file: str | None = None) -> None:
        import ray.train

        self.timing_file = timing_file
        # The reference profile reproduces the released code's DDP with unused-parameter
        # search; every other profile runs without it (all parameters take part in the loss).
        self.find_unused = False
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self._ray_train = ray.train

    def device(self, requested: str) -> torch.device:
        if requested == "cpu":
            return torch.device("cpu")
        import ray.train.torch

        return ray.train.torch.get_device()

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids,
                                       find_unused_parameters=self.find_unused)

    def train_sampler(self, dataset: Dataset, seed: int) -> Sampler[int]:
        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank,
                                  shuffle=True, seed=seed, drop_last=True)

    def eval_indices(self, size: int) -> Sequence[int]:
        # A strided shard without padding: every row is evaluated exactly once overall.
        return range(self.rank, size, self.world_size)

    def gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        # Every rank reports (Ray expects it); only rank 0 attaches a checkpoint: a pointer
        # to the run folder's last.pt, which stays the one copy of the weights.
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        if self.rank == 0 and checkpoint is not None:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "pointer.json").write_text(json.dumps(
                    {"last": str(checkpoint), "global_epoch": metrics.get("global_epoch")}))
                self._ray_train.report(scalars, checkpoint=self._ray_train.Checkpoint
                                       .from_directory(tmp))
        else:
            self._ray_train.report(scalars, checkpoint=None)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def mark(self, event: str) -> None:
        if self.timing_file and self.rank == 0:
            _append_mark(self.timing_file, event)


def _append_mark(path: str, event: str) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"event": event, "time": time.time()}) + "\n")


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker."""
    timing = loop_config.get("timing")
    if timing:
        _append_mark(timing, "worker_started")
    from hivg.train.fit import fit

    if timing:
        _append_mark(timing, "imports_done")
    threads = loop_config.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    config = Config.from_dict(loop_config["config"])
    hooks = RayHooks(timing)
    from hivg.train.profile import resolve_profile

    hooks.find_unused = resolve_profile(config, hooks.device(config.device).type).find_unused
    tracker = loop_config.get("tracker") if hooks.rank == 0 else None
    run_dir = Path(loop_config["run_dir"])
    sync = loop_config.get("sync")
    if sync is not None:
        # S3 storage: this node's mirror holds the run folder. On another node than the
        # last writer's, pull it first (config.yaml, last.pt after a restart).
        from hivg.orchestration.node_inputs import fetch_inputs

        run_dir = sync.local
        fetch_inputs(config, sync.storage)  # data and weights, when this node lacks them
        sync.pull(foreign_only=True)
        hooks.barrier()
        from hivg.orchestration.remote_storage import SyncHooks

        hooks = SyncHooks(hooks, sync)
    # The driver created the run folder; resuming is always safe here: with no last.pt the
    # trainer starts from scratch, otherwise it continues where the last attempt stopped.
    fit(config, run_dir, hooks=hooks, tracker=tracker, resume=True,
        show_progress=False, stage_cache=loop_config.get("stage_cache"))
    if sync is not None and hooks.is_main:
        sync.push()  # summary, predictions, best.pt


def check_shared_storage(storage: str | Path) -> None:
    """On a multi-node cluster, every node must see the storage folder (the run folder is
    written by rank 0, which may live on any node). Checked for real: a marker file the
    driver writes must be visible from a task on every node. S3 storage is shared by
    construction (each node keeps a mirror and rank 0 pushes): no marker check."""
    from hivg.orchestration.remote_storage import is_remote

    if is_remote(storage):
        return
    storage = Path(storage)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    storage.mkdir(parents=True, exist_ok=True)
    marker = storage.resolve() / f".shared-check-{uuid.uuid4().hex}"
    marker.write_text("ok")
    try:
        @ray.remote(num_cpus=0)
        def sees(path: str) -> bool:
            return os.path.exists(path)

        # One check per node (several nodes may share an address).
        checks = [(f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})", sees.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(str(marker))) for n in nodes]
        blind = [node for node, ref in checks if not ray.get(ref, timeout=60)]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise UserError(f"--storage {storage}: not shared: node(s) {', '.join(blind)} cannot "
                        "see it; use a path every node mounts (or s3://)")


def cluster_address(address: str | None) -> str | None:
    """`--address`, else $RAY_ADDRESS (what a Ray job's entrypoint has), else None (a local
    Ray of this process's own)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None, num_cpus: float | None = None, log: Callable[[str], None] = print
            ) -> None:
    """ray.init once: `auto` or HOST:PORT joins a cluster; None starts a local one."""
    import ray

    if ray.is_initialized():
        return
    if address and address not in ("auto", "local") and not address.startswith("ray://"):
        _check_tcp(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            # Ray announces that the local cluster it starts has token auth on (it is secure
            # already; nothing to do): one line of chatter on every local study
            logging.getLogger("ray._private.authentication.authentication_token_setup"
                              ).setLevel(logging.ERROR)
            ray.init(num_cpus=num_cpus, include_dashboard=None, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--address {address}: cannot connect to a Ray cluster: {first}") from None
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    log(f"ray: {nodes} node{'s' if nodes != 1 else ''}, "
        f"{ray.cluster_resources().get('CPU', 0):g} CPUs, "
        f"{ray.cluster_resources().get('GPU', 0):g} GPUs")


def cluster_capacity() -> dict[str, float]:
    """What the cluster can hold: its nodes' resources now, or more where its autoscaler may
    add nodes (the node types of cluster.yaml, published in the GCS by Ray's autoscaler). A
    fresh `ray up` cluster has no GPU node yet; its studies must still start."""
    import ray
    from ray._private.state import state

    capacity = dict(ray.cluster_resources())
    try:
        most = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # noqa: BLE001 - no autoscaler (a local Ray): what is there is all
        most = {}
    for key, value in most.items():
        capacity[key] = max(capacity.get(key, 0.0), float(value))
    return capacity


def check_tracking_uri_for_cluster(uri: str | None) -> None:
    """On a cluster of several nodes, refuse an MLflow URI only this machine can use: a
    server on loopback (a worker's 127.0.0.1 is the worker), or a file store (each node
    would write its own). One line, before any trial starts."""
    import ray

    if not uri or sum(1 for n in ray.nodes() if n.get("Alive")) <= 1:
        return
    from urllib.parse import urlparse

    from hivg.tracking import redact

    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https") and (parsed.hostname or "").lower() in (
            "localhost", "127.0.0.1", "::1", "0.0.0.0") or \
            (parsed.hostname or "").startswith("127."):
        raise UserError(f"MLflow tracking URI {redact(uri)}: a loopback address, which trials "
                        "on other nodes cannot reach; use the server's private address "
                        "(on a cluster from cluster.yaml, MLFLOW_TRACKING_URI has it)")
    if parsed.scheme in ("", "file", "sqlite"):
        raise UserError(f"MLflow tracking URI {redact(uri)}: a file on this machine, which "
                        "trials on other nodes cannot write; use a tracking server (on a "
                        "cluster from cluster.yaml, MLFLOW_TRACKING_URI has it)")




def _check_tcp(address: str, timeout: float = 3.0) -> None:
    """ray.init retries an unreachable GCS for minutes; answer in seconds instead."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"--address {address}: no Ray cluster reachable there "
                        f"({e.strerror or e})") from None


def train_on_ray(config: Config, run_dir: Path, resources: Resources, *,
                 max_failures: int = 0, tracker: Tracker | None = None,
                 stage_cache: Any = None, ray_storage: Path | None = None,
                 timing: str | None = None, callbacks: list | None = None,
                 sync: Any = None) -> dict[str, Any]:
    """Fit `config` on `resources.workers` Ray Train workers; the run folder must already
    hold config.yaml (the driver prepares it). Returns the run's summary. `timing`: a file
    that collects start-up milestones (benchmarks). `sync`: the run folder's RunFolderSync
    with S3 storage (rank 0 pushes; the driver pulls before reading summary.json)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    run_dir = Path(run_dir).resolve()
    loop_config = {"config": config.to_dict(), "run_dir": str(run_dir), "tracker": tracker,
                   "threads": max(1, int(resources.cpus_per_worker)), "timing": timing,
                   "stage_cache": stage_cache, "sync": sync}
    resources_per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        resources_per_worker["GPU"] = resources.gpus_per_worker
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if resources.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=resources.workers, use_gpu=resources.use_gpu,
                                     resources_per_worker=resources_per_worker),
        run_config=RunConfig(
            # Named from the run, never a timestamp, so a restarted driver finds its state.
            name=run_dir.name,
            storage_path=_storage_path(ray_storage or run_dir.parent / ".ray-train"),
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=callbacks),
    )
    trainer.fit()
    if sync is not None:  # rank 0 may have run on another node: its mirror is not ours
        sync.pull()
    return RunFolder(run_dir).read_summary()


def _storage_path(path: str | Path) -> str:
    """Ray Train's storage_path: a URI as given (Ray builds its pyarrow filesystem from it),
    a local folder made absolute."""
    return str(path) if "://" in str(path) else str(Path(path).resolve())


__all__ = ["RayHooks", "train_on_ray", "check_shared_storage", "connect", "cluster_address",
           "check_tracking_uri_for_cluster", "cluster_capacity"]
