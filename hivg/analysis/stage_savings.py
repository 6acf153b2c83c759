"""What the stage cache saved a study: stage-epochs its trials went through, against those
they trained (the rest were replayed from the cache, marked `reused` in metrics.jsonl).
Without the cache the same trials would have trained every one of them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from hivg.run_folder import REUSED, Trial


@dataclass(frozen=True)
class StageEpochs:
    trained: int
    reused: int

    @property
    def without_cache(self) -> int:
        return self.trained + self.reused

    def line(self) -> str:
        return (f"stage cache: {self.trained} of {self.without_cache} stage-epochs trained, "
                f"{self.reused} reused")

    def as_metrics(self) -> dict[str, int]:
        return {"stage_epochs_trained": self.trained, "stage_epochs_reused": self.reused,
                "stage_epochs_without_cache": self.without_cache}


def stage_epochs(trials: Iterable[Trial]) -> StageEpochs:
    """Counted over each trial's epochs (epoch 0, the stage-start evaluation, is no epoch)."""
    trained = reused = 0
    for trial in trials:
        for row in trial.metrics:
            if int(row.get("epoch", 0)) < 1:
                continue
            if row.get(REUSED):
                reused += 1
            else:
                trained += 1
    return StageEpochs(trained, reused)
