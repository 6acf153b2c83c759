"""The paper table of a study: one row per variant, one column per dataset x split.

A variants study: the first variant is the baseline. A search space: trials ordered by the
study metric on val, best first, and the best is the reference. Each cell: acc50 per seed,
the difference of means to the baseline, and the paired statistics (hivg.analysis.stats).
The paper's numbers join when the base is hivg-b16 or hivg-l14 and the study trains on one
of the paper's datasets.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from hivg.analysis.stats import N_BOOT, PairedStat, compare
from hivg.analysis.study import StudyResults

PUBLISHED_FILE = Path(__file__).with_name("published.yaml")


@dataclass
class Cell:
    values: list[float]                 # acc50 per seed (fractions)
    seeds: list[int]
    delta: Optional[float] = None       # difference of means to the baseline (fraction)
    stat: Optional[PairedStat] = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 with one seed)."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0


@dataclass
class Published:
    label: str                              # e.g. HiVG-B/16
    paper_weights: str
    our_weights: str
    values: dict[tuple[str, str], float]    # (dataset, split) -> acc50 in %


@dataclass
class ReportTable:
    study: StudyResults
    columns: list[tuple[str, str]]
    rows: list[tuple[str, dict[tuple[str, str], Cell]]]
    baseline: Optional[str]
    published: Optional[Published] = None
    n_boot: int = N_BOOT

    @property
    def typical_seeds(self) -> int:
        counts = [c.n for _, cells in self.rows for c in cells.values()]
        return max(set(counts), key=counts.count) if counts else 0

    def cell(self, variant: str, column: tuple[str, str]) -> Optional[Cell]:
        return dict(self.rows).get(variant, {}).get(column)


def compute_table(study: StudyResults, n_boot: int = N_BOOT, seed: int = 0) -> ReportTable:
    columns = study.columns
    rows = []
    base = study.baseline
    for variant in study.variants:
        cells: dict[tuple[str, str], Cell] = {}
        for dataset, split in columns:
            runs = [t for t in study.runs(variant, dataset) if t.acc(split) is not None]
            if runs:
                cells[(dataset, split)] = Cell([t.acc(split) for t in runs],
                                               [t.seed for t in runs])
        rows.append((variant, cells))
    if base is not None:
        base_cells = rows[0][1]
        for variant, cells in rows[1:]:
            for column, cell in cells.items():
                ref = base_cells.get(column)
                if ref is None:
                    continue
                cell.delta = cell.mean - ref.mean
                dataset, split = column
                cell.stat = compare(study.runs(base, dataset), study.runs(variant, dataset),
                                    split, n_boot=n_boot, seed=seed)
    return ReportTable(study=study, columns=columns, rows=rows, baseline=base,
                       published=published_for(study, columns), n_boot=n_boot)


def load_published() -> dict[str, Any]:
    return yaml.safe_load(PUBLISHED_FILE.read_text())


def published_for(study: StudyResults, columns: list[tuple[str, str]]) -> Optional[Published]:
    """The paper's numbers for this study's columns, when its base is hivg-b16 or hivg-l14 and
    it trains on at least one of the paper's datasets (single-dataset numbers)."""
    entry = load_published().get(study.preset or "")
    if not entry:
        return None
    values = {}
    for dataset, split in columns:
        value = ((entry.get("single") or {}).get(dataset) or {}).get(split)
        if value is not None:
            values[(dataset, split)] = float(value)
    if not values:
        return None
    weights = sorted({_weights_name(t.summary.get("starting_weights"))
                      for t in study.trials if t.variant == study.baseline and t.summary})
    return Published(label=entry["model"], paper_weights=entry["starting_weights"],
                     our_weights=", ".join(weights) or "unknown", values=values)


def _weights_name(value: Any) -> str:
    if not value:
        return "random init"
    text = str(value)
    return Path(text).name if "/" in text or "\\" in text else text
