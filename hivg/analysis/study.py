"""A finished study read back from its folder, and the summary rows of its results.json.

Input: what `run_study` leaves under `{storage}/{study}`: results.json, study.yaml and every
trial's run folder (read through hivg.run_folder.load_trials).
"""
from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from hivg.data.splits import split_sort_key
from hivg.errors import UserError
from hivg.run_folder import SELECTION_METRIC, Trial, acc50, load_trials

RESULTS, STUDY_FILE, TABLE = "results.json", "study.yaml", "table.md"


@dataclass
class StudyResults:
    """A finished study as read back from its folder."""

    name: str
    storage: Path
    directory: Path
    kind: str                      # variants | space
    metric: str
    mode: str
    spec: dict[str, Any]           # study.yaml as written
    results: dict[str, Any]        # results.json
    trials: list[Trial]            # finished trials (with summary.json)
    all_trials: list[Trial]        # every trial folder, finished or not, in trial order
    variants: list[str]            # the table's row order; the first is the baseline
    datasets: list[str]

    @property
    def baseline(self) -> Optional[str]:
        return self.variants[0] if self.variants else None

    @property
    def failed(self) -> list[str]:
        return list(self.results.get("failed_trials") or [])

    @property
    def preset(self) -> Optional[str]:
        for t in self.trials or self.all_trials:
            if t.config.get("preset"):
                return str(t.config["preset"])
        base = self.spec.get("base")
        return str(base) if base else None

    @property
    def resources(self) -> dict[str, float]:
        """What each trial asked for: as run (results.json), else as the study file says."""
        return dict(self.results.get("resources") or self.spec.get("resources") or {})

    @property
    def space_keys(self) -> list[str]:
        return list((self.spec.get("space") or {}).keys())

    def runs(self, variant: str, dataset: str) -> list[Trial]:
        return self._cells().get((variant, dataset), [])

    def _cells(self) -> dict[tuple[str, str], list[Trial]]:
        """(variant, dataset) -> its finished trials by seed, built once: a search's every
        trial is its own variant, and a scan per cell was quadratic (8 million property
        reads for a 1,000-trial table)."""
        if getattr(self, "_by_cell", None) is None or self._by_cell[0] is not self.trials:
            cells: dict[tuple[str, str], list[Trial]] = {}
            for t in self.trials:
                cells.setdefault((t.variant, t.dataset), []).append(t)
            for runs in cells.values():
                runs.sort(key=lambda t: t.seed)
            self._by_cell = (self.trials, cells)
        return self._by_cell[1]

    def splits(self, dataset: str) -> list[str]:
        names: dict[str, None] = {}
        val = "val"
        for t in self.trials:
            if t.dataset == dataset:
                val = t.val_split
                names.update(dict.fromkeys(t.splits))
        return sorted(names, key=lambda s: (s != val, split_sort_key(s)))

    @property
    def columns(self) -> list[tuple[str, str]]:
        return [(d, s) for d in self.datasets for s in self.splits(d)]


def load_study_results(storage: str | Path, study_name: str) -> StudyResults:
    """Read `{storage}/{study_name}`: results.json, study.yaml and every trial folder.
    Raises UserError when the study has no results.json."""
    storage = Path(storage)
    directory = storage / study_name
    results_path = directory / RESULTS
    if not results_path.is_file():
        where = "no such study" if not directory.is_dir() else f"no {RESULTS} (not finished?)"
        raise UserError(f"{directory}: {where}; run the study with pipelines/ablate.py or "
                        "pipelines/sweep.py first")
    results = json.loads(results_path.read_text())
    spec_path = directory / STUDY_FILE
    spec = (yaml.safe_load(spec_path.read_text()) or {}) if spec_path.is_file() else {}
    kind = results.get("kind") or ("space" if "space" in spec else "variants")
    metric = results.get("metric") or spec.get("metric") or SELECTION_METRIC
    mode = spec.get("mode") or "max"
    all_trials = sorted(load_trials(directory), key=lambda t: trial_order(t.variant))
    if results.get("trial_folders") is not None:  # trials the study no longer has stay out
        current = set(results["trial_folders"])
        all_trials = [t for t in all_trials if t.folder.name in current]
    trials = [t for t in all_trials if t.finished]
    datasets = list(dict.fromkeys([r["dataset"] for r in results.get("rows") or []] +
                                  [t.dataset for t in trials]))
    if kind == "variants":
        declared = list((spec.get("variants") or {}).keys())
        listed = [r["variant"] for r in results.get("rows") or []]
        present = {t.variant for t in trials}
        variants = [v for v in dict.fromkeys(declared + listed + [t.variant for t in trials])
                    if v in present]
    else:
        variants = _best_first(trials, metric, mode)
    return StudyResults(name=study_name, storage=storage, directory=directory, kind=kind,
                        metric=metric, mode=mode, spec=spec, results=results, trials=trials,
                        all_trials=all_trials, variants=variants, datasets=datasets)


def _best_first(trials: list[Trial], metric: str, mode: str) -> list[str]:
    """A search's trials ordered by their mean `metric`, best first (ties: trial order)."""
    def score(variant: str) -> float:
        values = [t.best_value(metric, mode) for t in trials if t.variant == variant]
        values = [x for x in values if x is not None]
        if not values:
            return math.inf
        mean = statistics.fmean(values)
        return -mean if mode == "max" else mean

    return sorted(dict.fromkeys(t.variant for t in trials),
                  key=lambda v: (score(v), trial_order(v)))


def trial_order(variant: str) -> tuple[int, str]:
    """t007 / grid007 -> 7 (a search's trial number); other names after them, by name."""
    m = re.fullmatch(r"(?:t|grid)(\d+)", variant)
    return (int(m.group(1)), "") if m else (1 << 30, variant)


# ----------------------------------------------------------------------------- results.json
def results_rows(trials: list[Trial], datasets: list[str],
                 variants: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """Per variant x dataset: val and test acc50, mean and std over the finished seeds
    (`variants`: the row order; default: sorted names)."""
    finished = [t for t in trials if t.finished]
    order = variants or sorted({t.variant for t in finished})
    rows = []
    for variant in order:
        for dataset in datasets:
            group = [t for t in finished if (t.variant, t.dataset) == (variant, dataset)]
            if not group:
                continue
            row: dict[str, Any] = {"variant": variant, "dataset": dataset, "seeds": len(group)}
            for split in ("val", "test"):
                values = [v for v in (t.acc(split) for t in group) if v is not None]
                row[acc50(split)] = statistics.fmean(values) if values else float("nan")
                row[acc50(split) + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            rows.append(row)
    return rows


def trial_row(trial: Trial) -> dict[str, Any]:
    """A finished trial as results.json lists it."""
    s = trial.summary or {}
    return {"variant": trial.variant, "dataset": trial.dataset, "seed": trial.seed,
            acc50("val"): s.get(acc50("val")), acc50("test"): s.get(acc50("test")),
            "wall_time_s": s.get("wall_time_s"), "epochs": s.get("epochs_trained"),
            "run_dir": str(trial.folder.path)}
