"""Search efficiency: what a search found, and the epochs it spent, read from its trials.

A trial's epochs are the epochs it reported (rows of its metrics.jsonl with epoch >= 1):
training it was stopped part-way by ASHA counts up to the stop, and a stage replayed from the
stage cache counts as if trained, since a search without the cache would have trained it.
What a search "found" is its completed trial with the best validation score (the searcher
never sees test), and that trial's test acc50.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from hivg.errors import UserError
from hivg.run_folder import SELECTION_METRIC, Trial, acc50, load_trials


@dataclass(frozen=True)
class TrialOutcome:
    run_dir: str
    point: tuple                 # the space's values, in the study's axis order
    epochs: int                  # epochs reported
    best_val: float              # best val acc50 it reported
    test: float | None          # test acc50 if it completed (None: stopped early)


@dataclass(frozen=True)
class SearchOutcome:
    name: str
    trials: list[TrialOutcome]

    @property
    def epochs(self) -> int:
        return sum(t.epochs for t in self.trials)

    @property
    def found(self) -> TrialOutcome:
        done = [t for t in self.trials if t.test is not None]
        if not done:
            raise UserError(f"search {self.name}: no trial completed, nothing was found")
        return max(done, key=lambda t: t.best_val)


def read_trials(study_dir: Path, axes: Iterable[str]) -> list[TrialOutcome]:
    """Every trial under {study_dir}/trials that started (has a config.yaml)."""
    axes = list(axes)
    return [TrialOutcome(run_dir=str(t.folder.path),
                         point=tuple(t.config_value(a) for a in axes),
                         epochs=t.epochs_reported,
                         best_val=_best_or_nan(t),
                         test=None if t.summary is None else t.summary.get(acc50("test")))
            for t in load_trials(study_dir)]


def _best_or_nan(trial: Trial) -> float:
    """The best validation value among its epochs (nan before any)."""
    values = [r[SELECTION_METRIC] for r in trial.metrics if SELECTION_METRIC in r]
    return max(values) if values else float("nan")


def compare(grid: SearchOutcome, searches: list[SearchOutcome]) -> dict[str, Any]:
    """The grid against each search: epochs and the test acc50 of what each found."""
    vals = sorted(t.best_val for t in grid.trials)
    best = grid.found
    rows = [{"search": grid.name, "trials": len(grid.trials), "epochs": grid.epochs,
             "epochs_pct_of_grid": 100.0, "found": list(best.point),
             "found_val": best.best_val, "found_test": best.test, "gap_to_grid_test": 0.0}]
    for s in searches:
        f = s.found
        rows.append({"search": s.name, "trials": len(s.trials), "epochs": s.epochs,
                     "epochs_pct_of_grid": 100.0 * s.epochs / grid.epochs,
                     "found": list(f.point), "found_val": f.best_val, "found_test": f.test,
                     "gap_to_grid_test": f.test - best.test})
    searched = rows[1:]
    mean_gap = statistics.fmean(r["gap_to_grid_test"] for r in searched) if searched else None
    mean_pct = statistics.fmean(r["epochs_pct_of_grid"] for r in searched) if searched else None
    return {
        "rows": rows,
        "grid_points": len(grid.trials),
        "grid_best_val": vals[-1] if vals else None,
        "grid_median_val": statistics.median(vals) if vals else None,
        "grid_best_minus_median_val": (vals[-1] - statistics.median(vals)) if vals else None,
        "grid_best_test_any_point": max((t.test for t in grid.trials if t.test is not None),
                                        default=None),
        "mean_gap_to_grid_test": mean_gap,
        "mean_epochs_pct_of_grid": mean_pct,
        "target_met": (mean_gap is not None and mean_gap >= -0.01 and mean_pct <= 35.0),
    }


def format_comparison(result: dict[str, Any]) -> str:
    lines = ["| search | trials | epochs | % of grid epochs | found (best val) | val acc50 | "
             "test acc50 | vs grid (test) |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['search']} | {r['trials']} | {r['epochs']} | "
                     f"{r['epochs_pct_of_grid']:.0f}% | {r['found']} | {r['found_val']:.3f} | "
                     f"{r['found_test']:.3f} | {100 * r['gap_to_grid_test']:+.1f} pts |")
    lines.append("")
    lines.append(f"grid: {result['grid_points']} points, val acc50 best {result['grid_best_val']:.3f}"
                 f", median {result['grid_median_val']:.3f} (spread "
                 f"{100 * result['grid_best_minus_median_val']:.1f} pts)")
    if result["mean_gap_to_grid_test"] is not None:
        lines.append(f"TPE + ASHA, mean over searcher seeds: {100 * result['mean_gap_to_grid_test']:+.1f}"
                     f" pts of test acc50 vs the grid's pick, {result['mean_epochs_pct_of_grid']:.0f}% "
                     f"of its epochs (target: within 1 pt for <= 35%: "
                     f"{'met' if result['target_met'] else 'not met'})")
    return "\n".join(lines) + "\n"
