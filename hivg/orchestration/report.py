"""Reports of finished studies: the paper table, paired statistics, cost and plots.

    from hivg.orchestration.report import write_report
    write_report("runs", "demo")   # -> runs/demo/report/: report.md, table.csv, table.tex, *.png

Input: what `run_study` leaves under `{storage}/{study}`: results.json, study.yaml and every
trial's run folder (config.yaml, summary.json, metrics.jsonl, predictions/SPLIT.parquet).
Nothing here needs Ray or MLflow (`log_report` takes any object with `log_artifact`), and
matplotlib is imported only when a plot is drawn (Agg canvas, no pyplot state).

The table: one row per variant (a variants study: the first variant is the baseline; a
search space: trials ordered by the study metric on val, best first, and the best is the
reference), one column per dataset x split (val first, then every test split the trials
evaluated); acc50 in %, mean ± std over seeds, and the difference of means to the baseline.

Paired statistics, per (variant vs baseline, dataset, split):
- pairs: the two runs of the same seed, matched by expression id (seed by seed, only seeds
  both have), concatenated over seeds.
- McNemar's exact test: two-sided binomial test (p = 1/2) on the discordant pairs
  (baseline right / variant wrong vs the reverse); p = 1 without discordant pairs.
- Paired bootstrap: expressions are resampled with replacement (an expression keeps its
  pairs of every seed together), `n_boot` times with a fixed seed; the 95% interval is the
  percentile interval of the resampled accuracy differences. Since a resample only changes
  how often each expression is drawn, it is drawn exactly as multinomial counts over the
  expressions' distinct (sum of differences, pairs) values: vectorised, O(n_boot) memory.
  A delta whose interval includes 0 is marked not significant (†).
Neither captures seed-to-seed variance beyond the seeds paired; the ± column shows that.

Cost: device-hours per run = wall time x workers (world_size) x GPUs per worker on a GPU run,
or CPUs per worker on a CPU run (study.yaml's resources); energy (kWh) where a summary has
`energy_kwh`; accuracy per device-hour = mean test acc50 (points) / device-hours per run.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import yaml

from hivg.data.splits import split_sort_key
from hivg.errors import UserError

N_BOOT = 2000
LEVEL = 0.95
PUBLISHED_FILE = Path(__file__).with_name("published.yaml")
NS = "†"                      # marks a delta whose bootstrap interval includes 0
NO_PAIRS = "?"                # marks a delta without paired predictions
MAX_BAR_ROWS = 10             # bars and Pareto: the first rows (search spaces: the best ones)
LINESTYLES = ("-", "--", "-.", ":")
EXACT_MCNEMAR_MAX_N = 10_000  # exact integer arithmetic up to here, log-space above
_DEFAULT_RESOURCES = {"workers": 1, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0}


# ============================================================================ loading
@dataclass
class TrialRun:
    """One trial's run folder."""

    key: str                       # the folder name
    variant: str
    dataset: str
    seed: int
    run_dir: Path
    config: dict[str, Any]
    summary: Optional[dict[str, Any]]   # None: not finished (stopped early, failed, running)
    metrics: list[dict[str, Any]]
    _predictions: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def val_split(self) -> str:
        return (self.config.get("data") or {}).get("val_split") or "val"

    @property
    def splits(self) -> list[str]:
        """The evaluated splits, val first."""
        if not self.summary:
            return []
        names = list(self.summary.get("splits") or {})
        if not names:
            names = [k[:-len("/acc50")] for k in self.summary if k.endswith("/acc50")]
        return sorted(names, key=lambda s: (s != self.val_split, split_sort_key(s)))

    @property
    def test_splits(self) -> list[str]:
        return [s for s in self.splits if s != self.val_split]

    def acc(self, split: str) -> Optional[float]:
        """acc50 of `split` as a fraction (None: not evaluated)."""
        if not self.summary:
            return None
        value = (self.summary.get("splits") or {}).get(split, {}).get("acc50")
        if value is None:
            value = self.summary.get(f"{split}/acc50")
        return float(value) if value is not None and math.isfinite(value) else None

    def headline_acc(self) -> Optional[float]:
        """Mean acc50 over the test splits (val when there are none)."""
        values = [v for v in (self.acc(s) for s in self.test_splits) if v is not None]
        if not values:
            return self.acc(self.val_split)
        return float(np.mean(values))

    def best_value(self, metric: str, mode: str = "max") -> Optional[float]:
        """The study metric this trial reached: its summary's best, else the best epoch."""
        if self.summary:
            best = self.summary.get("best") or {}
            for value in (best.get(metric), self.summary.get(metric)):
                if isinstance(value, (int, float)) and math.isfinite(value):
                    return float(value)
        values = [r[metric] for r in self.metrics
                  if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
        if not values:
            return None
        return float(max(values) if mode == "max" else min(values))

    @property
    def epochs(self) -> int:
        if self.summary and "epochs_trained" in self.summary:
            return int(self.summary["epochs_trained"])
        return max((int(r.get("global_epoch", 0)) for r in self.metrics), default=0)

    def predictions(self, split: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(expression ids, hits) of `split`, or None without predictions/SPLIT.parquet."""
        if split not in self._predictions:
            path = self.run_dir / "predictions" / f"{split}.parquet"
            if not path.is_file():
                self._predictions[split] = None
            else:
                import pyarrow.parquet as pq

                table = pq.read_table(path, columns=["id", "hit"])
                ids = np.asarray(table.column("id").to_pylist(), dtype=str)
                hits = np.asarray(table.column("hit").to_numpy(zero_copy_only=False),
                                  dtype=bool)
                self._predictions[split] = (ids, hits)
        return self._predictions[split]

    def config_value(self, key: str) -> Any:
        """A dotted config key as the trial ran it (`hilora.stages.NAME.x` by stage name,
        `hilora.num_stages` as the number of stages); None when it does not apply."""
        if key == "hilora.num_stages":
            return len((self.config.get("hilora") or {}).get("stages") or [])
        node: Any = self.config
        parts = key.split(".")
        i = 0
        while i < len(parts):
            part = parts[i]
            if isinstance(node, list):  # hilora.stages: a list of named stages
                node = next((s for s in node if isinstance(s, dict) and s.get("name") == part),
                            None)
            elif isinstance(node, dict):
                node = node.get(part)
            else:
                return None
            if node is None:
                return None
            i += 1
        return node


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
    trials: list[TrialRun]         # finished trials (with summary.json)
    all_trials: list[TrialRun]     # every trial folder, finished or not, in trial order
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
        return {**_DEFAULT_RESOURCES, **(self.spec.get("resources") or {})}

    @property
    def space_keys(self) -> list[str]:
        return list((self.spec.get("space") or {}).keys())

    def runs(self, variant: str, dataset: str) -> list[TrialRun]:
        return sorted((t for t in self.trials if t.variant == variant and t.dataset == dataset),
                      key=lambda t: t.seed)

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
    results_path = directory / "results.json"
    if not results_path.is_file():
        where = "no such study" if not directory.is_dir() else "no results.json (not finished?)"
        raise UserError(f"{directory}: {where}; run the study with pipelines/ablate.py or "
                        "pipelines/sweep.py first")
    results = json.loads(results_path.read_text())
    spec_path = directory / "study.yaml"
    spec = (yaml.safe_load(spec_path.read_text()) or {}) if spec_path.is_file() else {}
    kind = results.get("kind") or ("space" if "space" in spec else "variants")
    metric = results.get("metric") or spec.get("metric") or "val/acc50"
    mode = spec.get("mode") or "max"

    # Every trial folder; results.json's run_dir is absolute, so a moved storage falls back
    # to the folder of the same name under this study.
    folders: dict[str, Path] = {}
    for row in results.get("trials") or []:
        run_dir = Path(row["run_dir"])
        if not (run_dir / "summary.json").is_file():
            run_dir = directory / "trials" / run_dir.name
        folders[run_dir.name] = run_dir
    trials_dir = directory / "trials"
    if trials_dir.is_dir():
        for config in sorted(trials_dir.glob("*/config.yaml")):
            folders.setdefault(config.parent.name, config.parent)
    all_trials = [t for t in (_read_trial(p) for p in folders.values()) if t is not None]
    all_trials.sort(key=lambda t: _trial_order(t.variant))
    trials = [t for t in all_trials if t.finished]

    datasets = list(dict.fromkeys([r["dataset"] for r in results.get("rows") or []] +
                                  [t.dataset for t in trials]))
    present = {t.variant for t in trials}
    if kind == "variants":
        declared = list((spec.get("variants") or {}).keys())
        listed = [r["variant"] for r in results.get("rows") or []]
        variants = [v for v in dict.fromkeys(declared + listed + [t.variant for t in trials])
                    if v in present]
    else:
        def score(v: str) -> float:
            values = [t.best_value(metric, mode) for t in trials if t.variant == v]
            values = [x for x in values if x is not None]
            if not values:
                return math.inf
            mean = float(np.mean(values))
            return -mean if mode == "max" else mean

        variants = sorted(dict.fromkeys(t.variant for t in trials),
                          key=lambda v: (score(v), _trial_order(v)))
    return StudyResults(name=study_name, storage=storage, directory=directory, kind=kind,
                        metric=metric, mode=mode, spec=spec, results=results, trials=trials,
                        all_trials=all_trials, variants=variants, datasets=datasets)


def _read_trial(run_dir: Path) -> Optional[TrialRun]:
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        return None
    config = yaml.safe_load(config_path.read_text()) or {}
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    metrics_path = run_dir / "metrics.jsonl"
    metrics = []
    if metrics_path.is_file():
        metrics = [json.loads(line) for line in metrics_path.read_text().splitlines()
                   if line.strip()]
    return TrialRun(key=run_dir.name, variant=str(config.get("variant", run_dir.name)),
                    dataset=str((config.get("data") or {}).get("dataset", "?")),
                    seed=int(config.get("seed", 0)), run_dir=run_dir, config=config,
                    summary=summary, metrics=metrics)


def _trial_order(variant: str) -> tuple[int, str]:
    """t007 / grid007 -> 7 (a search's trial number); other names after them, by name."""
    m = re.fullmatch(r"(?:t|grid)(\d+)", variant)
    return (int(m.group(1)), "") if m else (1 << 30, variant)


# ============================================================================ statistics
def mcnemar_exact(only_baseline: int, only_variant: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test (p = 1/2) on the discordant pairs,
    p = min(1, 2 P[X <= min(b, c)]) with X ~ Bin(b + c, 1/2); 1 without discordant pairs."""
    b, c = int(only_baseline), int(only_variant)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    if n <= EXACT_MCNEMAR_MAX_N:
        term = tail = 1
        for i in range(1, k + 1):
            term = term * (n - i + 1) // i
            tail += term
        return min(1.0, 2 * tail / 2 ** n)
    logs = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                     for i in range(k + 1)]) - n * math.log(2)
    top = logs.max()
    return min(1.0, 2 * math.exp(top + math.log(np.exp(logs - top).sum())))


def paired_bootstrap(baseline: np.ndarray, variant: np.ndarray,
                     groups: Optional[np.ndarray] = None, n_boot: int = N_BOOT,
                     seed: int = 0, level: float = LEVEL) -> tuple[float, float, float]:
    """(delta, low, high): accuracy of `variant` minus `baseline` over paired hit vectors and
    its percentile bootstrap interval. Resamples the `groups` (expression ids; default: each
    pair its own group) with replacement; a group keeps all its pairs."""
    a = np.asarray(baseline, dtype=np.int64)
    b = np.asarray(variant, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"expected two non-empty hit vectors of one length, got {a.shape} "
                         f"and {b.shape}")
    d = b - a
    if groups is None:
        codes = np.arange(d.size)
    else:
        _, codes = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(codes, weights=d)                      # per expression
    counts = np.bincount(codes)
    kinds, per_kind = np.unique(np.stack([sums, counts], axis=1), axis=0, return_counts=True)
    n_groups = int(counts.size)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_groups, per_kind / n_groups, size=n_boot)
    deltas = (draws @ kinds[:, 0]) / (draws @ kinds[:, 1])
    alpha = (1 - level) / 2
    low, high = np.quantile(deltas, [alpha, 1 - alpha])
    return float(d.sum() / d.size), float(low), float(high)


@dataclass
class PairedStat:
    """A variant against the baseline on one dataset x split (fractions)."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    only_baseline: int     # baseline right, variant wrong
    only_variant: int      # variant right, baseline wrong
    pairs: int
    seeds: list[int]

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def paired_hits(baseline_runs: Iterable[TrialRun], variant_runs: Iterable[TrialRun],
                split: str) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]]:
    """Hit vectors paired by expression id, seed by seed, concatenated over the seeds both
    sides have: (baseline hits, variant hits, expression ids, seeds); None without pairs."""
    by_seed = {t.seed: t for t in variant_runs}
    parts_a, parts_b, parts_id, seeds = [], [], [], []
    for base in baseline_runs:
        other = by_seed.get(base.seed)
        if other is None:
            continue
        pa, pb = base.predictions(split), other.predictions(split)
        if pa is None or pb is None:
            continue
        _, ia, ib = np.intersect1d(pa[0], pb[0], assume_unique=True, return_indices=True)
        if ia.size == 0:
            continue
        parts_a.append(pa[1][ia])
        parts_b.append(pb[1][ib])
        parts_id.append(pa[0][ia])
        seeds.append(base.seed)
    if not seeds:
        return None
    return (np.concatenate(parts_a), np.concatenate(parts_b), np.concatenate(parts_id), seeds)


def compare(baseline_runs: list[TrialRun], variant_runs: list[TrialRun], split: str,
            n_boot: int = N_BOOT, seed: int = 0) -> Optional[PairedStat]:
    paired = paired_hits(baseline_runs, variant_runs, split)
    if paired is None:
        return None
    a, b, ids, seeds = paired
    delta, low, high = paired_bootstrap(a, b, ids, n_boot=n_boot, seed=seed)
    only_baseline = int(np.sum(a & ~b))
    only_variant = int(np.sum(~a & b))
    return PairedStat(delta=delta, ci_low=low, ci_high=high,
                      p_value=mcnemar_exact(only_baseline, only_variant),
                      only_baseline=only_baseline, only_variant=only_variant, pairs=int(a.size),
                      seeds=seeds)


# ============================================================================ the table
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
            if not runs:
                continue
            cells[(dataset, split)] = Cell([t.acc(split) for t in runs], [t.seed for t in runs])
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


# ---------------------------------------------------------------------------- formatting
def _pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}"


def _signed(x: float, digits: int = 2) -> str:
    return f"{100 * x:+.{digits}f}"


def _mark(cell: Cell) -> str:
    if cell.delta is None:
        return ""
    if cell.stat is None:
        return NO_PAIRS
    return "" if cell.stat.significant else NS


def _cell_text(table: ReportTable, cell: Optional[Cell], latex: bool = False) -> str:
    if cell is None:
        return "-"
    pm = r"\pm" if latex else "±"
    core = _pct(cell.mean) if cell.n == 1 else f"{_pct(cell.mean)} {pm} {_pct(cell.std)}"
    if latex:
        core = f"${core}$"
    if cell.n != table.typical_seeds:
        core += f" (n={cell.n})"
    if cell.delta is not None:
        mark = _mark(cell)
        if latex:
            mark = {NS: r"$^\dagger$", NO_PAIRS: "?"}.get(mark, "")
            core += rf" {{\scriptsize (${_signed(cell.delta)}$)}}{mark}"
        else:
            core += f" ({_signed(cell.delta)}){mark}"
    return core


def _published_rows(table: ReportTable) -> list[tuple[str, list[str]]]:
    pub = table.published
    if pub is None:
        return []
    base_cells = table.rows[0][1] if table.rows else {}
    paper, gap = [], []
    for column in table.columns:
        value = pub.values.get(column)
        paper.append("-" if value is None else f"{value:.2f}")
        ours = base_cells.get(column)
        gap.append("-" if value is None or ours is None else f"{100 * ours.mean - value:+.2f}")
    return [(f"published {pub.label} (paper)", paper),
            (f"{table.baseline} - paper", gap)]


def footnotes(table: ReportTable, standalone: bool = False) -> list[str]:
    """The table's notes; `standalone`: for a table read without the report around it."""
    study = table.study
    n = table.typical_seeds
    seeds = ", ".join(map(str, sorted({t.seed for t in study.trials})))
    first = (f"acc50 in %: mean ± sample std over {n} seeds ({seeds}) per cell" if n != 1 else
             f"acc50 in %: one seed ({seeds}) per cell, so no std")
    if any(c.n != n for _, cells in table.rows for c in cells.values()):
        first += "; (n=k): a cell with another number of seeds"
    notes = [first + "."]
    if table.baseline is not None and len(table.rows) > 1:
        ref = ("the baseline" if study.kind == "variants" else
               f"the best trial on {study.metric} ({table.baseline})")
        notes.append(f"(+x.xx): difference of the means to {ref}, in points. {NS}: its paired "
                     f"bootstrap {int(LEVEL * 100)}% interval includes 0 (not significant); "
                     f"unmarked deltas exclude 0." + (
                         "" if standalone else " Intervals and McNemar p-values: paired "
                                               "statistics below."))
        if any(_mark(c) == NO_PAIRS for _, cells in table.rows for c in cells.values()):
            notes.append(f"{NO_PAIRS}: no paired predictions (predictions/SPLIT.parquet "
                         f"missing or no common seed), no test.")
    if study.kind == "space":
        notes.append(f"Search space: rows are trials, best {study.metric} first; test splits "
                     f"were never seen by the searcher, but picking the reference on val "
                     f"and testing it against the rest is still a post-hoc comparison.")
    if table.published is not None:
        pub = table.published
        notes.append(f"Published: {pub.label}, Table 1 of the paper (single dataset), "
                     f"starting from {pub.paper_weights}. Ours ({table.baseline}) starts from "
                     f"{pub.our_weights}.")
    return notes


def to_markdown(table: ReportTable) -> str:
    header = ["variant" if table.study.kind == "variants" else "trial"] + \
        [f"{d} {s}" for d, s in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for variant, cells in table.rows:
        parts = [_cell_text(table, cells.get(c)) for c in table.columns]
        lines.append(f"| {variant} | " + " | ".join(parts) + " |")
    for label, parts in _published_rows(table):
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in footnotes(table)) + "\n"


CSV_FIELDS = ["variant", "dataset", "split", "n_seeds", "seeds", "acc50_mean_pct",
              "acc50_std_pct", "delta_pct", "ci_low_pct", "ci_high_pct", "mcnemar_p",
              "only_baseline", "only_variant", "pairs", "significant"]


def to_csv(table: ReportTable) -> str:
    """One row per variant x dataset x split (tidy), plus the published numbers, whose
    delta_pct is the gap of the baseline to them (baseline - paper, as in the table)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    r = lambda x: "" if x is None else round(100 * x, 4)  # noqa: E731
    for variant, cells in table.rows:
        for (dataset, split) in table.columns:
            cell = cells.get((dataset, split))
            if cell is None:
                continue
            s = cell.stat
            writer.writerow({
                "variant": variant, "dataset": dataset, "split": split, "n_seeds": cell.n,
                "seeds": " ".join(map(str, cell.seeds)), "acc50_mean_pct": r(cell.mean),
                "acc50_std_pct": r(cell.std), "delta_pct": r(cell.delta),
                "ci_low_pct": r(s.ci_low) if s else "", "ci_high_pct": r(s.ci_high) if s else "",
                "mcnemar_p": f"{s.p_value:.6g}" if s else "",
                "only_baseline": s.only_baseline if s else "",
                "only_variant": s.only_variant if s else "", "pairs": s.pairs if s else "",
                "significant": "" if s is None else str(s.significant).lower()})
    pub = table.published
    if pub is not None:
        base_cells = table.rows[0][1] if table.rows else {}
        for (dataset, split), value in pub.values.items():
            ours = base_cells.get((dataset, split))
            writer.writerow({"variant": f"published {pub.label} (paper)", "dataset": dataset,
                             "split": split, "acc50_mean_pct": value,
                             "delta_pct": "" if ours is None else
                             round(100 * ours.mean - value, 4)})
    return out.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: ReportTable) -> str:
    """A booktabs table (needs \\usepackage{booktabs})."""
    groups = list(dict.fromkeys(d for d, _ in table.columns))
    ncol = len(table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "c" * ncol + "}", r"\toprule"]
    top, rules, col = ["Variant"], [], 2
    for d in groups:
        span = sum(1 for dd, _ in table.columns if dd == d)
        top.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(d)}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
        col += span
    lines.append(" & ".join(top) + r" \\")
    lines.append(" ".join(rules))
    lines.append(" & ".join([""] + [latex_escape(s) for _, s in table.columns]) + r" \\")
    lines.append(r"\midrule")
    for variant, cells in table.rows:
        parts = [_cell_text(table, cells.get(c), latex=True) for c in table.columns]
        lines.append(" & ".join([latex_escape(variant)] + parts) + r" \\")
    published = _published_rows(table)
    if published:
        lines.append(r"\midrule")
        for label, parts in published:
            parts = [p if p == "-" else f"${p}$" for p in parts]
            lines.append(" & ".join([latex_escape(label)] + parts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = " ".join(footnotes(table, standalone=True)).replace(NS, "\x00")
    notes = latex_escape(notes).replace("\x00", r"$^\dagger$").replace("±", r"$\pm$")
    lines += [r"\\[2pt]", rf"\parbox{{\linewidth}}{{\footnotesize {notes}}}",
              rf"\caption{{{latex_escape(table.study.name)}: acc50 (\%) per variant.}}",
              rf"\label{{tab:{re.sub(r'[^A-Za-z0-9]+', '-', table.study.name)}}}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def stats_markdown(table: ReportTable) -> str:
    lines = ["| variant | dataset | split | delta | 95% CI | McNemar p | b / c | pairs | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    any_row = False
    for variant, cells in table.rows[1:]:
        for (dataset, split) in table.columns:
            cell = cells.get((dataset, split))
            if cell is None or cell.stat is None:
                continue
            s = cell.stat
            any_row = True
            lines.append(f"| {variant} | {dataset} | {split} | {_signed(s.delta)}"
                         f"{'' if s.significant else ' ' + NS} | [{_signed(s.ci_low)}, "
                         f"{_signed(s.ci_high)}] | {_pvalue(s.p_value)} | "
                         f"{s.only_baseline} / {s.only_variant} | {s.pairs} | "
                         f"{' '.join(map(str, s.seeds))} |")
    if not any_row:
        return "No paired comparisons (one row, or no predictions).\n"
    return ("\n".join(lines) + "\n\n- delta: paired accuracy difference (variant - "
            f"{table.baseline}) in points over the paired expressions; CI: paired bootstrap "
            f"over expressions ({table.n_boot} resamples); b / c: pairs the "
            f"baseline alone / the variant alone got right; McNemar: exact two-sided "
            f"binomial test on b and c.\n")


def _pvalue(p: float) -> str:
    return "<1e-300" if p == 0 else (f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}")


# ============================================================================ cost
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


def trial_cost(trial: TrialRun, resources: dict[str, float]) -> tuple[float, str]:
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
            f"{'-' if r.acc is None else _pct(r.acc)} | "
            f"{'-' if r.acc_per_hour is None else f'{r.acc_per_hour:.4g}'} |")
    return ("\n".join(lines) + "\n\n- device-hours = wall time x workers x "
            "(GPUs per worker on GPU, CPUs per worker on CPU), from summary.json and the "
            "study's resources; a stage reused from the stage cache costs nothing here. "
            "test acc50: mean over the test splits, datasets and seeds. Energy: the summaries' "
            "`energy_kwh` (- when not measured).\n")


# ============================================================================ plots
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return (n + cols - 1) // cols, cols


def _short_key(key: str) -> str:
    """model.bridge.vision_layers -> bridge.vision_layers; hilora.stages.stage1.rank ->
    stage1.rank."""
    parts = key.split(".")
    return ".".join(parts[-2:]) if len(parts) > 2 else key


def plot_bars(table: ReportTable, path: Path) -> Optional[Path]:
    """Per dataset: acc50 per split, one bar per variant, error bars = std over seeds."""
    study = table.study
    rows = table.rows[:MAX_BAR_ROWS]
    if not rows or not table.columns:
        return None
    datasets = study.datasets
    nrows, ncols = _grid(len(datasets))
    fig = _figure(4.2 * ncols + 0.6, 3.3 * nrows + 0.7)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = _colors(len(rows))
    width = 0.8 / len(rows)
    for ax, dataset in zip(axes.flat, datasets):
        splits = study.splits(dataset)
        x = np.arange(len(splits))
        top = 0.0
        for i, (variant, cells) in enumerate(rows):
            means, errs = [], []
            for s in splits:
                c = cells.get((dataset, s))
                means.append(100 * c.mean if c else np.nan)
                errs.append(100 * c.std if c and c.n > 1 else 0.0)
            ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=errs, capsize=2,
                   color=colors[i], label=variant, error_kw={"elinewidth": 0.8})
            top = max(top, np.nanmax(np.array(means) + np.array(errs)) if splits else 0)
        pub = table.published
        if pub is not None:
            for j, s in enumerate(splits):
                v = pub.values.get((dataset, s))
                if v is not None:
                    ax.hlines(v, j - 0.45, j + 0.45, colors="black", linestyles="--",
                              linewidth=1, label="paper" if j == 0 else None)
                    top = max(top, v)
        ax.set_xticks(x, splits)
        ax.set_title(dataset)
        ax.set_ylabel("acc50 (%)")
        ax.set_ylim(0, min(100, max(top * 1.12, 1)))
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(datasets):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if "paper" in labels:  # the paper's line last, after the variants
        i = labels.index("paper")
        handles, labels = handles[:i] + handles[i + 1:] + [handles[i]], \
            labels[:i] + labels[i + 1:] + ["paper (published)"]
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=8,
               frameon=False)
    title = f"{study.name}: acc50 per variant (mean ± std over seeds)"
    if len(table.rows) > len(rows):
        title += f", best {len(rows)} of {len(table.rows)}"
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    return path


def _curve(trials: list[TrialRun], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                          np.ndarray]:
    """(x, mean, low, high) of `metric` over the trials' epochs, aligned by (stage, epoch)."""
    points: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for t in trials:
        for r in t.metrics:
            v = r.get(metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                points.setdefault((int(r.get("stage_index", 0)), int(r.get("epoch", 0))),
                                  []).append((int(r.get("global_epoch", 0)), 100 * float(v)))
    keys = sorted(points)
    x = np.array([points[k][0][0] for k in keys], dtype=float)
    vals = [[v for _, v in points[k]] for k in keys]
    return (x, np.array([np.mean(v) for v in vals]), np.array([min(v) for v in vals]),
            np.array([max(v) for v in vals]))


def _stage_bounds(trial: TrialRun) -> list[tuple[float, str]]:
    """(global epoch where a stage starts, stage name) for every stage after the first;
    stages starting at the same epoch (0-epoch stages) share one boundary, names joined."""
    bounds: dict[float, list[str]] = {}
    seen = set()
    for r in trial.metrics:
        k = int(r.get("stage_index", 0))
        if k not in seen:
            seen.add(k)
            if k > 0:
                bounds.setdefault(float(r.get("global_epoch", 0)), []).append(
                    str(r.get("stage", k)))
    return [(b, "+".join(names)) for b, names in bounds.items()]


def plot_learning_curves(table: ReportTable, path: Path, metric: str = "val/acc50"
                         ) -> Optional[Path]:
    """Per dataset: `metric` vs global epoch, stage boundaries dashed. Variants: mean over
    seeds with the min-max band; a search space: one line per trial (early stops end early)."""
    import matplotlib

    study = table.study
    datasets = [d for d in study.datasets
                if any(t.metrics for t in study.all_trials if t.dataset == d)]
    if not datasets:
        return None
    nrows, ncols = _grid(len(datasets), 2)
    fig = _figure(max(5.6 * ncols, 7.5), 3.6 * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    space = study.kind == "space"
    variants = study.variants if not space else list(dict.fromkeys(
        t.variant for t in study.all_trials))
    colors = dict(zip(variants, _colors(len(variants))))
    legend_items: dict[str, Any] = {}
    for ax, dataset in zip(axes.flat, datasets):
        ref_bounds: list[tuple[float, str]] = []
        if space:
            trials = [t for t in study.all_trials if t.dataset == dataset and t.metrics]
            scores = [t.best_value(metric, study.mode) for t in trials]
            scores = [None if s is None else 100 * s for s in scores]
            finite = [s for s in scores if s is not None]
            norm = matplotlib.colors.Normalize(min(finite, default=0), max(finite, default=1))
            cmap = matplotlib.colormaps["viridis"]
            for t, s in zip(trials, scores):
                x, mean, _, _ = _curve([t], metric)
                ax.plot(x, mean, color=cmap(norm(s if s is not None else 0)), linewidth=1,
                        alpha=0.8)
            if trials:
                ref_bounds = _stage_bounds(max(trials, key=lambda t: len(t.metrics)))
            from matplotlib.cm import ScalarMappable

            bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, pad=0.01)
            bar.set_label(f"best {metric} (%)", fontsize=8)
        else:
            for i, variant in enumerate(variants):
                trials = [t for t in study.all_trials
                          if t.variant == variant and t.dataset == dataset and t.metrics]
                if not trials:
                    continue
                x, mean, low, high = _curve(trials, metric)
                (line,) = ax.plot(x, mean, color=colors[variant], linewidth=1.4,
                                  linestyle=LINESTYLES[i % len(LINESTYLES)],
                                  marker="o" if len(x) < 30 else None, markersize=2.5)
                if len(trials) > 1:
                    ax.fill_between(x, low, high, color=colors[variant], alpha=0.15,
                                    linewidth=0)
                legend_items.setdefault(variant, line)
                bounds = _stage_bounds(trials[0])
                if variant == study.baseline:
                    ref_bounds = bounds
                elif bounds != _stage_bounds(next(
                        (t for t in study.all_trials if t.variant == study.baseline and
                         t.dataset == dataset and t.metrics), trials[0])):
                    for b, _ in bounds:  # another schedule: its boundaries in its colour
                        ax.axvline(b, color=colors[variant], linestyle=":", linewidth=1)
        ax.xaxis.get_major_locator().set_params(integer=True)
        lo, hi = ax.get_xlim()
        for b, name in ref_bounds:
            ax.axvline(b, color="0.35", linestyle="--", linewidth=0.8)
            right = (b - lo) / ((hi - lo) or 1) > 0.8  # near the right edge: label on the left
            ax.text(b, 0.99, f" {name} " if right else f" {name}",
                    transform=ax.get_xaxis_transform(), fontsize=7, va="top",
                    ha="right" if right else "left", color="0.3",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.3})
        ax.set_title(dataset, pad=4)
        ax.set_xlabel("global epoch")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    for ax in list(axes.flat)[len(datasets):]:
        ax.set_visible(False)
    if legend_items:
        labels = list(legend_items)
        fig.legend([legend_items[k] for k in labels], labels, loc="outside lower center",
                   ncol=min(len(labels), 4), fontsize=8, frameon=False)
    what = ("mean over seeds, band: min to max" if not space else
            "one line per trial, coloured by its best value")
    fig.suptitle(f"{study.name}: learning curves\n({what}; grey dashed: stage starts)",
                 fontsize=10)
    fig.savefig(path)
    return path


def plot_pareto(study: StudyResults, path: Path) -> Optional[Path]:
    """Per dataset: headline test acc50 vs device-hours per run, one point per variant, the
    Pareto front (nothing cheaper is at least as accurate) joined."""
    datasets = [d for d in study.datasets if compute_cost(study, d)]
    if not datasets:
        return None
    nrows, ncols = _grid(len(datasets), 3)
    fig = _figure(max(4.8 * ncols, 6.5), 3.8 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = dict(zip(study.variants, _colors(len(study.variants))))
    for ax, dataset in zip(axes.flat, datasets):
        rows = [r for r in compute_cost(study, dataset) if r.acc is not None]
        rows = rows[:MAX_BAR_ROWS * 2] if study.kind == "space" else rows
        if not rows:
            continue
        unit = rows[0].unit if len({r.unit for r in rows}) == 1 else "device"
        xs = np.array([r.hours_per_run for r in rows])
        ys = np.array([100 * r.acc for r in rows])
        for r, x, y in zip(rows, xs, ys):
            ax.scatter([x], [y], color=colors.get(r.variant, "C0"), s=36, zorder=3)
        order = np.lexsort((-ys, xs))
        front, best = [], -np.inf
        for i in order:
            if ys[i] > best:
                front.append(i)
                best = ys[i]
        ax.plot(xs[front], ys[front], color="0.4", linestyle="--", linewidth=1, zorder=2,
                drawstyle="steps-post", label="Pareto front")
        if xs.max() > 0 and xs.min() > 0 and xs.max() / xs.min() > 20:
            ax.set_xscale("log")
        ax.set_xlabel(f"{unit}-hours per run")
        ax.set_ylabel("test acc50 (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.2)
        named = set(range(len(rows)))
        if study.kind == "space":  # many trials: name the front and the three best only
            named = set(front) | set(np.argsort(-ys)[:3].tolist())
        _label_points(ax, xs, ys, [r.variant if i in named else None
                                   for i, r in enumerate(rows)])
    for ax in list(axes.flat)[len(datasets):]:
        ax.set_visible(False)
    fig.suptitle(f"{study.name}: accuracy vs cost (dashed: Pareto front)", fontsize=10)
    fig.savefig(path)
    return path


def _label_points(ax, xs: np.ndarray, ys: np.ndarray, labels: list[Optional[str]]) -> None:
    """Labels right of their points; a label that would overlap one already placed moves
    up or down (alternately, further each time) with a thin leader line."""
    if not len(xs):
        return
    fig = ax.figure
    fig.canvas.draw()  # settle limits and layout so data -> pixels is final
    scale = fig.dpi / 72  # offsets are in points, positions in pixels
    disp = ax.transData.transform(np.column_stack([xs, ys]))
    placed: list[tuple[float, float, float]] = []  # x, y, width (pixels)
    for i in np.argsort(-disp[:, 1]):
        if labels[i] is None:
            continue
        width = 5.0 * len(labels[i]) * scale
        x0, y0 = disp[i][0] + 6 * scale, disp[i][1]
        for step in range(41):
            dy = (step + 1) // 2 * (1 if step % 2 else -1) * 10.0 if step else 0.0
            y = y0 + dy * scale
            if not any(x0 < px + pw and px < x0 + width and abs(py - y) < 10 * scale
                       for px, py, pw in placed):
                break
        placed.append((x0, y, width))
        ax.annotate(labels[i], (xs[i], ys[i]), xytext=(6, dy), textcoords="offset points",
                    fontsize=7, va="center", ha="left",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75,
                          "pad": 0.4},
                    arrowprops=({"arrowstyle": "-", "color": "0.6", "lw": 0.5,
                                 "shrinkA": 0, "shrinkB": 3} if dy else None))


def plot_parallel_coordinates(study: StudyResults, path: Path) -> Optional[Path]:
    """Search spaces: one axis per searched key plus the metric, one line per trial (early
    stopped ones too, at the best value they reached), coloured by the metric."""
    import matplotlib
    from matplotlib.cm import ScalarMappable

    keys = study.space_keys
    trials = [t for t in study.all_trials if t.best_value(study.metric, study.mode) is not None]
    if not keys or not trials:
        return None
    datasets = list(dict.fromkeys(t.dataset for t in trials))
    space = study.spec.get("space") or {}
    fig = _figure(max(7.0, 1.9 * (len(keys) + 1) + 1.5), 4.4 * len(datasets) + 0.4)
    axes = fig.subplots(len(datasets), 1, squeeze=False)[:, 0]
    cmap = matplotlib.colormaps["viridis"]
    for ax, dataset in zip(axes, datasets):
        group = [t for t in trials if t.dataset == dataset]
        scores = np.array([100 * t.best_value(study.metric, study.mode) for t in group])
        columns, ticks = [], []
        for key in keys:
            values = [t.config_value(key) for t in group]
            kind = next(iter(space.get(key) or {"choice": None}))
            numeric = kind in ("uniform", "loguniform", "int") and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if numeric:
                v = np.array(values, dtype=float)
                log = kind == "loguniform" and (v > 0).all()
                tv = np.log10(v) if log else v
                lo, hi = float(tv.min()), float(tv.max())
                span = hi - lo or 1.0
                columns.append((tv - lo) / span if hi > lo else np.full(len(v), 0.5))
                tick_vals = np.linspace(lo, hi, 3) if hi > lo else np.array([lo])
                ticks.append([((t - lo) / span if hi > lo else 0.5,
                               _num(10 ** t if log else t)) for t in tick_vals])
            else:
                labels = [_value_label(v) for v in values]
                declared = [_value_label(v) for v in ((space.get(key) or {}).get(kind) or [])
                            ] if kind in ("choice", "grid") else []
                cats = [c for c in dict.fromkeys(declared + sorted(set(labels))) if c in labels]
                pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5)
                       for i, c in enumerate(cats)}
                columns.append(np.array([pos[c] for c in labels]))
                ticks.append([(pos[c], c) for c in cats])
        lo, hi = float(scores.min()), float(scores.max())
        columns.append((scores - lo) / (hi - lo) if hi > lo else np.full(len(scores), 0.5))
        ticks.append([(0.0, f"{lo:.1f}"), (1.0, f"{hi:.1f}")] if hi > lo else
                     [(0.5, f"{lo:.1f}")])
        data = np.column_stack(columns)
        norm = matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1)
        xs = np.arange(data.shape[1])
        jitter = np.random.default_rng(0).uniform(-0.012, 0.012, size=data.shape)
        jitter[:, -1] = 0
        for row, s in sorted(zip(data + jitter, scores), key=lambda p: p[1]):
            ax.plot(xs, row, color=cmap(norm(s)), linewidth=1.3, alpha=0.85)
        for i, axis_ticks in enumerate(ticks):
            ax.axvline(i, color="0.2", linewidth=0.8)
            for y, label in axis_ticks:
                ax.text(i + 0.04, y, label, fontsize=7, va="center", ha="left",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7,
                              "pad": 0.5})
        names = [_short_key(k) for k in keys] + [f"{study.metric} (%)"]
        ax.set_xticks(xs, names, fontsize=8)
        ax.set_yticks([])
        ax.set_xlim(-0.1, len(xs) - 0.4)
        ax.set_ylim(-0.06, 1.06)
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
        ax.set_title(f"{dataset} ({len(group)} trials)", fontsize=9)
        bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, pad=0.02, fraction=0.03)
        bar.set_label(f"{study.metric} (%)", fontsize=8)
    fig.suptitle(f"{study.name}: searched values (best {study.metric} per trial)", fontsize=10)
    fig.savefig(path)
    return path


def _num(x: float) -> str:
    return f"{x:.3g}"


def _value_label(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value_label(x) for x in v) + "]"
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return _num(v)
    return str(v)


def plot_history(study: StudyResults, path: Path) -> Optional[Path]:
    """Search spaces: each trial's best metric in trial order and the best so far; hollow
    markers for trials that did not finish (stopped early)."""
    trials = [t for t in study.all_trials if t.best_value(study.metric, study.mode) is not None]
    if not trials:
        return None
    datasets = list(dict.fromkeys(t.dataset for t in trials))
    nrows, ncols = _grid(len(datasets), 2)
    fig = _figure(5.4 * ncols, 3.6 * nrows + 0.3)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    pick = max if study.mode == "max" else min
    for ax, dataset in zip(axes.flat, datasets):
        group = [t for t in trials if t.dataset == dataset]
        x = np.array([n if n < 1 << 30 else i
                      for i, (n, _) in enumerate(_trial_order(t.variant) for t in group)])
        y = np.array([100 * t.best_value(study.metric, study.mode) for t in group])
        done = np.array([t.finished for t in group])
        best = np.array([pick(y[:i + 1]) for i in range(len(y))])
        ax.scatter(x[done], y[done], color="C0", s=22, label="finished", zorder=3)
        if (~done).any():
            ax.scatter(x[~done], y[~done], facecolors="none", edgecolors="C0", s=22,
                       label="stopped early", zorder=3)
        ax.step(x, best, where="post", color="C3", linewidth=1.4, label="best so far")
        ax.set_xlabel("trial number (start order)")
        ax.set_ylabel(f"{study.metric} (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(datasets):]:
        ax.set_visible(False)
    epochs = sum(t.epochs for t in study.all_trials)
    fig.suptitle(f"{study.name}: optimisation history ({len(trials)} trials, "
                 f"{epochs} epochs in all)", fontsize=10)
    fig.savefig(path)
    return path


# ============================================================================ the report
def space_trials_markdown(study: StudyResults) -> str:
    keys = study.space_keys
    lines = ["| trial | dataset | " + " | ".join(_short_key(k) for k in keys) +
             f" | {study.metric} | test acc50 | epochs | status |",
             "|---" * (len(keys) + 6) + "|"]
    for t in study.all_trials:
        best = t.best_value(study.metric, study.mode)
        test = t.headline_acc() if t.finished else None
        lines.append(f"| {t.variant} | {t.dataset} | " +
                     " | ".join(_value_label(t.config_value(k)) for k in keys) +
                     f" | {'-' if best is None else _pct(best)} | "
                     f"{'-' if test is None else _pct(test)} | {t.epochs} | "
                     f"{'finished' if t.finished else 'stopped'} |")
    return "\n".join(lines) + "\n"


def write_report(storage: str | Path, study_name: str, out_dir: str | Path | None = None,
                 n_boot: int = N_BOOT, seed: int = 0, plots: bool = True) -> Path:
    """Write report.md, table.csv, table.tex and the PNG plots of a finished study into
    `out_dir` (default `{storage}/{study}/report/`); return that folder."""
    study = load_study_results(storage, study_name)
    if not study.trials:
        raise UserError(f"{study.directory}: no finished trials to report")
    out = Path(out_dir) if out_dir is not None else study.directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = compute_table(study, n_boot=n_boot, seed=seed)
    markdown = to_markdown(table)
    (out / "table.md").write_text(markdown)
    (out / "table.csv").write_text(to_csv(table))
    (out / "table.tex").write_text(to_latex(table))

    images: list[tuple[str, Optional[Path]]] = []
    no_matplotlib = plots and importlib.util.find_spec("matplotlib") is None
    if plots and not no_matplotlib:
        images = [("acc50 per variant", plot_bars(table, out / "bars.png")),
                  ("learning curves", plot_learning_curves(table, out / "learning_curves.png")),
                  ("accuracy vs cost", plot_pareto(study, out / "pareto.png"))]
        if study.kind == "space":
            images += [("searched values",
                        plot_parallel_coordinates(study, out / "parallel_coordinates.png")),
                       ("optimisation history", plot_history(study, out / "history.png"))]

    preset = study.preset or "?"
    seeds = sorted({t.seed for t in study.trials})
    parts = [f"# Study `{study.name}`\n",
             f"{'Ablation (variants)' if study.kind == 'variants' else 'Search space'} on "
             f"base `{preset}`; datasets {', '.join(study.datasets)}; seeds "
             f"{', '.join(map(str, seeds))}; {len(study.trials)} finished trials"
             + (f" of {len(study.all_trials)}" if len(study.all_trials) != len(study.trials)
                else "") + f"; selection metric `{study.metric}` ({study.mode}).\n",
             "## Accuracy\n", markdown,
             "## Paired statistics\n", stats_markdown(table),
             "## Cost\n", cost_markdown(compute_cost(study))]
    if study.kind == "space":
        parts += ["## Trials\n", space_trials_markdown(study)]
    if study.failed:
        parts += ["## Failed trials\n", "\n".join(f"- {f}" for f in study.failed) + "\n"]
    drawn = [(title, p) for title, p in images if p is not None]
    if no_matplotlib:
        parts.append("Plots skipped: matplotlib is not installed (pip install matplotlib).\n")
    if drawn:
        parts.append("## Plots\n")
        parts += [f"![{title}]({p.name})\n" for title, p in drawn]
    parts.append("Files: table.md, table.csv (tidy, one row per variant x dataset x split), "
                 "table.tex (booktabs)" + "".join(f", {p.name}" for _, p in drawn) + ".\n")
    (out / "report.md").write_text("\n".join(parts))
    return out


# ============================================================================ MLflow
def log_report(tracker: Any, report_dir: str | Path, artifact_path: str = "report") -> None:
    """Log the report folder to a run: `tracker` is anything with log_artifact(path,
    artifact_path) (hivg.tracking.MlflowTracker: a folder's files go under artifact_path)."""
    report_dir = Path(report_dir)
    if not report_dir.is_dir():
        raise UserError(f"{report_dir}: no report folder to log")
    tracker.log_artifact(report_dir, artifact_path)


def study_run_id(tracking_uri: str, study_name: str) -> Optional[str]:
    """The MLflow parent run of a study (run_study tags it `hivg.run_key=study:NAME`)."""
    from hivg.tracking import find_run

    return find_run(tracking_uri, study_name, f"study:{study_name}")


def study_name_of_run(tracking_uri: str, run_id: str) -> Optional[str]:
    """The study a parent run id belongs to (its `study` tag), or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException:
        return None
    return run.data.tags.get("study")


def log_report_to_study_run(report_dir: str | Path, tracking_uri: str,
                            study_name: str) -> Optional[str]:
    """Log the report folder to the study's parent run; its id, or None without one."""
    run_id = study_run_id(tracking_uri, study_name)
    if run_id is None:
        return None
    from mlflow import MlflowClient

    from hivg.tracking import MlflowTracker

    log_report(MlflowTracker(MlflowClient(tracking_uri=tracking_uri), tracking_uri, run_id),
               report_dir)
    return run_id


def report_after_study(table: dict[str, Any], storage: str | Path,
                       log: Callable[[str], None] = print) -> Optional[Path]:
    """End of ablate.py / sweep.py: write the report and say where it is; log it to the
    parent run when `table` carries `mlflow_uri`. A failure here is a warning: the study's
    results are already safe."""
    name = table["study"]
    try:
        out = write_report(storage, name)
    except Exception as e:  # noqa: BLE001 - the study itself succeeded
        log(f"warning: no report ({type(e).__name__}: {e}); retry with "
            f"python pipelines/report.py {name} --storage {storage}")
        return None
    log(f"report: {out / 'report.md'} (table.csv, table.tex, plots)")
    uri = table.get("mlflow_uri")
    if uri:
        try:
            run_id = log_report_to_study_run(out, uri, name)
            if run_id:
                log(f"report logged to MLflow run {run_id} (artifacts/report)")
        except Exception as e:  # noqa: BLE001
            log(f"warning: report not logged to MLflow ({type(e).__name__}: {e})")
    return out


__all__ = ["load_study_results", "write_report", "compute_table", "to_markdown", "to_csv",
           "to_latex", "mcnemar_exact", "paired_bootstrap", "paired_hits", "compare",
           "compute_cost", "trial_cost", "log_report", "log_report_to_study_run",
           "report_after_study", "study_name_of_run", "StudyResults", "TrialRun", "Cell",
           "PairedStat", "ReportTable", "CostRow", "load_published"]
