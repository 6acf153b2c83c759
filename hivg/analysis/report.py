"""The report of a finished study: the paper table (Markdown, CSV, LaTeX), paired
statistics, cost and plots, in one folder.

    from hivg.analysis import write_report
    write_report("runs", "demo")   # -> runs/demo/report/: report.md, table.csv, table.tex, *.png

Nothing here needs Ray or MLflow (hivg.orchestration.study_report logs the folder to the
study's MLflow run).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from hivg.analysis.cost import compute_cost, cost_markdown
from hivg.analysis.formats import pct, stats_markdown, to_csv, to_latex, to_markdown
from hivg.analysis.plots import (plot_bars, plot_history, plot_learning_curves,
                                 plot_parallel_coordinates, plot_pareto, short_key, value_label)
from hivg.analysis.stats import N_BOOT
from hivg.analysis.study import StudyResults, load_study_results
from hivg.analysis.table import compute_table
from hivg.errors import UserError


def space_trials_markdown(study: StudyResults) -> str:
    keys = study.space_keys
    lines = ["| trial | dataset | " + " | ".join(short_key(k) for k in keys) +
             f" | {study.metric} | test acc50 | epochs | status |",
             "|---" * (len(keys) + 6) + "|"]
    for t in study.all_trials:
        best = t.best_value(study.metric, study.mode)
        test = t.headline_acc() if t.finished else None
        lines.append(f"| {t.variant} | {t.dataset} | " +
                     " | ".join(value_label(t.config_value(k)) for k in keys) +
                     f" | {'-' if best is None else pct(best)} | "
                     f"{'-' if test is None else pct(test)} | {t.epochs} | "
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
