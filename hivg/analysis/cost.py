"""What a study cost: device-hours, wall time and energy per variant, and accuracy per
device-hour.

Device-hours per run = wall time x workers (world_size) x GPUs per worker on a GPU run, or
CPUs per worker on a CPU run (the trials' resources as run; 1 per worker where unknown);
energy (kWh) where a summary has `energy_kwh`; accuracy per device-hour = mean test acc50
(points) / device-hours per run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from hivg.analysis.formats import pct
from hivg.analysis.study import StudyResults
from hivg.run_folder import Trial


@dataclass
class CostRow:
    variant: str
    runs: int
    unit: str                      # GPU, CPU or GPU+CPU
    device_hours: float            # total over the variant's runs
    wall_s: float                  # total
    energy_kwh: Optional[float]    # total, None when no summary reports it
    acc: Optional[float]           # mean headline acc50 (fraction) over runs

    @property
    def hours_per_run(self) -> float:
        return self.device_hours / self.runs if self.runs else float("nan")

    @property
    def acc_per_hour(self) -> Optional[float]:
        """Points of acc50 per device-hour of one run."""
        if self.acc is None or not self.hours_per_run > 0:
            return None
        return 100 * self.acc / self.hours_per_run


def trial_cost(trial: Trial, resources: dict[str, float]) -> tuple[float, str]:
    """(device-hours, GPU or CPU) of one finished trial."""
    s = trial.summary or {}
    wall = float(s.get("wall_time_s") or 0.0)
    workers = int(s.get("world_size") or max(int(resources.get("workers") or 1), 1))
    if str(s.get("device", "cpu")).startswith("cuda"):
        per_worker = float(resources.get("gpus_per_worker") or 0) or 1.0
        return wall / 3600 * workers * per_worker, "GPU"
    per_worker = float(resources.get("cpus_per_worker") or 1.0)
    return wall / 3600 * workers * per_worker, "CPU"


def compute_cost(study: StudyResults, dataset: Optional[str] = None) -> list[CostRow]:
    rows = []
    for variant in study.variants:
        runs = [t for t in study.trials if t.variant == variant and
                (dataset is None or t.dataset == dataset)]
        if not runs:
            continue
        costs = [trial_cost(t, study.resources) for t in runs]
        units = sorted({u for _, u in costs}, reverse=True)
        energy = [t.summary.get("energy_kwh") for t in runs]
        accs = [a for a in (t.headline_acc() for t in runs) if a is not None]
        rows.append(CostRow(
            variant=variant, runs=len(runs), unit="+".join(units),
            device_hours=sum(h for h, _ in costs),
            wall_s=sum(float(t.summary.get("wall_time_s") or 0) for t in runs),
            energy_kwh=(float(sum(energy)) if all(isinstance(e, (int, float)) for e in energy)
                        else None),
            acc=float(np.mean(accs)) if accs else None))
    return rows


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _hours(h: float) -> str:
    return f"{h:.3g}" if h < 10 else f"{h:.1f}"


def cost_markdown(rows: list[CostRow]) -> str:
    unit = rows[0].unit if rows and len({r.unit for r in rows}) == 1 else "device"
    lines = [f"| variant | runs | {unit}-h total | {unit}-h per run | wall per run | energy "
             f"(kWh) | test acc50 (%) | acc50 points per {unit}-h |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.variant} | {r.runs} | {_hours(r.device_hours)}"
            f"{'' if unit != 'device' else ' ' + r.unit} | {_hours(r.hours_per_run)} | "
            f"{_duration(r.wall_s / r.runs)} | "
            f"{'-' if r.energy_kwh is None else f'{r.energy_kwh:.3g}'} | "
            f"{'-' if r.acc is None else pct(r.acc)} | "
            f"{'-' if r.acc_per_hour is None else f'{r.acc_per_hour:.4g}'} |")
    return ("\n".join(lines) + "\n\n- device-hours = wall time x workers x "
            "(GPUs per worker on GPU, CPUs per worker on CPU), from summary.json and the "
            "study's resources; a stage reused from the stage cache costs nothing here. "
            "test acc50: mean over the test splits, datasets and seeds. Energy: the summaries' "
            "`energy_kwh` (- when not measured).\n")
