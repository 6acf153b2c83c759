"""What the trainer is handed from outside: distributed hooks and a tracker.

The training loop never imports Ray or MLflow. Ray Train supplies its own `TrainHooks`
(wrap the model in DDP, shard the data, report metrics + checkpoints); MLflow supplies a
`Tracker`. Locally both default to the plain versions below.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, Sequence

if TYPE_CHECKING:  # torch is imported where it is used: a study's driver and its trial
    import torch   # processes import this module without loading torch
    from torch.utils.data import Dataset, Sampler


class Tracker(Protocol):
    """Experiment tracker interface (MLflow implements it in hivg.tracking)."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def end(self, status: str) -> None: ...


class NullTracker:
    """Records nothing; the default outside a tracked run and on ranks other than 0."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def end(self, status: str) -> None:
        pass


class _EpochShuffleSampler:
    """A shuffled order that depends on (seed, epoch) only, never on the process (a
    DataLoader sampler: iterable, sized)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size


class TrainHooks:
    """Single-process hooks. Subclasses change where the model and data live."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        import torch

        if requested == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(requested)

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def train_sampler(self, dataset: Dataset, seed: int) -> Sampler[int]:
        return _EpochShuffleSampler(len(dataset), seed)

    def eval_indices(self, size: int) -> Sequence[int]:
        """The rows this process evaluates; together the processes cover each row once."""
        return range(size)

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order (eval results are merged from this)."""
        return [obj]

    def all_reduce_mean(self, value: float) -> float:
        return value

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        """Called once per epoch after the run folder is updated (Ray passes it upward)."""

    def barrier(self) -> None:
        pass

    def mark(self, event: str) -> None:
        """A start-up milestone (`setup_done`, `first_epoch`); benchmarks time them."""
