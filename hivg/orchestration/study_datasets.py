"""Which of a study's datasets it runs.

`--datasets NAME ...` picks a subset of the study's own datasets (`all`: every one of them).
A dataset counts as prepared when its train and val manifests are there (the synthetic
benchmark is generated on demand, so it always counts). With some unprepared, a study stops
in one line that lists which datasets are prepared and which are not, and gives the command
that prepares the rest; with `--skip-missing` it runs the prepared ones and says which it left
out under its table. Run the study again (without --resume) once the rest are prepared: its
finished trials are reused, the new datasets' trials run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hivg.data.manifest import list_splits
from hivg.errors import UserError
from hivg.orchestration.search_space import Study

GENERATED = ("synthetic",)


@dataclass
class DatasetPlan:
    run: list[str]
    skipped: list[str] = field(default_factory=list)   # not prepared, left out (--skip-missing)
    data_dir: str = ""

    @property
    def note(self) -> Optional[str]:
        """The line printed under the study's table when datasets were left out."""
        if not self.skipped:
            return None
        return (f"not run: {', '.join(self.skipped)} (not prepared in {self.data_dir}; "
                "--skip-missing). Prepare them and run the study again without --resume: "
                "finished trials are reused.")


def select_datasets(study: Study, requested: Optional[list[str]]) -> list[str]:
    """The study's datasets that `--datasets` names, in the study's order."""
    if not requested:
        return list(study.datasets)
    names = list(study.datasets) if "all" in requested else list(dict.fromkeys(requested))
    unknown = [d for d in names if d not in study.datasets]
    if unknown:
        raise UserError(f"--datasets: {', '.join(unknown)} not among the study's datasets "
                        f"({', '.join(study.datasets)}; or all)")
    return [d for d in study.datasets if d in names]


def is_prepared(data_dir: str | Path, dataset: str, splits: tuple[str, ...]) -> bool:
    return dataset in GENERATED or set(splits) <= set(list_splits(data_dir, dataset))


def prepare_command(datasets: list[str], storage: str | Path) -> str:
    return (f"python pipelines/prepare_data.py --dataset {' '.join(datasets)} --image-root DIR "
            f"--storage {storage}  (DIR: the authors' data root; docs/weights.md)")


def plan_datasets(study: Study, data_dir: str | Path, storage: str | Path, *,
                  requested: Optional[list[str]] = None, skip_missing: bool = False
                  ) -> tuple[Study, DatasetPlan]:
    """The study restricted to what runs, and the plan; UserError (one line) when datasets
    are not prepared and skip_missing is off, or when none is."""
    chosen = select_datasets(study, requested)
    splits = (study.base.data.train_split, study.base.data.val_split)
    ready = [d for d in chosen if is_prepared(data_dir, d, splits)]
    missing = [d for d in chosen if d not in ready]
    if missing and (not skip_missing or not ready):
        also = "; or --skip-missing to run the prepared ones" if ready else ""
        raise UserError(f"datasets: prepared in {data_dir}: {', '.join(ready) or 'none'}; "
                        f"not prepared: {', '.join(missing)}. Prepare them with: "
                        f"{prepare_command(missing, storage)}{also}")
    plan = DatasetPlan(run=ready, skipped=missing, data_dir=str(data_dir))
    return dataclasses.replace(study, datasets=ready), plan
