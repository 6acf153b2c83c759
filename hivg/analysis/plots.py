"""The study's plots (PNG): acc50 bars, learning curves, accuracy vs cost, and for a search
space the searched values (parallel coordinates) and the optimisation history.

matplotlib is imported only when a plot is drawn (Agg canvas, no pyplot state).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from hivg.analysis.cost import compute_cost
from hivg.analysis.study import StudyResults, trial_order
from hivg.analysis.table import ReportTable
from hivg.run_folder import SELECTION_METRIC, Trial

MAX_BAR_ROWS = 10             # bars and Pareto: the first rows (search spaces: the best ones)
LINESTYLES = ("-", "--", "-.", ":")


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


def _panels(n: int, max_cols: int, size) -> tuple[Any, list]:
    """A figure with one panel per item, at most `max_cols` a row, spare panels hidden;
    `size(rows, cols)` gives its (width, height) in inches."""
    cols = min(n, max_cols)
    rows = (n + cols - 1) // cols
    fig = _figure(*size(rows, cols))
    panels = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in panels[n:]:
        ax.set_visible(False)
    return fig, panels[:n]


def short_key(key: str) -> str:
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
    fig, axes = _panels(len(datasets), 3, lambda r, c: (4.2 * c + 0.6, 3.3 * r + 0.7))
    colors = _colors(len(rows))
    width = 0.8 / len(rows)
    for ax, dataset in zip(axes, datasets):
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
    handles, labels = axes[0].get_legend_handles_labels()
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


def _curve(trials: list[Trial], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray,
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


def _stage_bounds(trial: Trial) -> list[tuple[float, str]]:
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


def plot_learning_curves(table: ReportTable, path: Path, metric: str = SELECTION_METRIC
                         ) -> Optional[Path]:
    """Per dataset: `metric` vs global epoch, stage boundaries dashed. Variants: mean over
    seeds with the min-max band; a search space: one line per trial (early stops end early)."""
    study = table.study
    datasets = [d for d in study.datasets
                if any(t.metrics for t in study.all_trials if t.dataset == d)]
    if not datasets:
        return None
    fig, axes = _panels(len(datasets), 2, lambda r, c: (max(5.6 * c, 7.5), 3.6 * r + 0.9))
    space = study.kind == "space"
    legend_items: dict[str, Any] = {}
    for ax, dataset in zip(axes, datasets):
        if space:
            bounds = _trial_curves(fig, ax, study, dataset, metric)
        else:
            bounds = _variant_curves(ax, study, dataset, metric, legend_items)
        _draw_stage_starts(ax, bounds)
        ax.set_title(dataset, pad=4)
        ax.set_xlabel("global epoch")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
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


def _trial_curves(fig, ax, study: StudyResults, dataset: str, metric: str
                  ) -> list[tuple[float, str]]:
    """A search space: one line per trial, coloured by its best value (a colour bar beside);
    returns the stage starts of its longest trial."""
    import matplotlib
    from matplotlib.cm import ScalarMappable

    trials = [t for t in study.all_trials if t.dataset == dataset and t.metrics]
    scores = [t.best_value(metric, study.mode) for t in trials]
    scores = [None if s is None else 100 * s for s in scores]
    finite = [s for s in scores if s is not None]
    norm = matplotlib.colors.Normalize(min(finite, default=0), max(finite, default=1))
    cmap = matplotlib.colormaps["viridis"]
    for t, s in zip(trials, scores):
        x, mean, _, _ = _curve([t], metric)
        ax.plot(x, mean, color=cmap(norm(s if s is not None else 0)), linewidth=1, alpha=0.8)
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, pad=0.01)
    bar.set_label(f"best {metric} (%)", fontsize=8)
    return _stage_bounds(max(trials, key=lambda t: len(t.metrics))) if trials else []


def _variant_curves(ax, study: StudyResults, dataset: str, metric: str,
                    legend_items: dict[str, Any]) -> list[tuple[float, str]]:
    """Variants: the mean over seeds with its min-max band, one style per variant; a variant
    with another stage schedule than the baseline's draws its own starts dotted. Returns the
    baseline's stage starts."""
    colors = dict(zip(study.variants, _colors(len(study.variants))))

    def runs(variant: str) -> list[Trial]:
        return [t for t in study.all_trials
                if t.variant == variant and t.dataset == dataset and t.metrics]

    baseline_runs = runs(study.baseline) if study.baseline else []
    reference = _stage_bounds(baseline_runs[0]) if baseline_runs else None
    for i, variant in enumerate(study.variants):
        trials = runs(variant)
        if not trials:
            continue
        x, mean, low, high = _curve(trials, metric)
        (line,) = ax.plot(x, mean, color=colors[variant], linewidth=1.4,
                          linestyle=LINESTYLES[i % len(LINESTYLES)],
                          marker="o" if len(x) < 30 else None, markersize=2.5)
        if len(trials) > 1:
            ax.fill_between(x, low, high, color=colors[variant], alpha=0.15, linewidth=0)
        legend_items.setdefault(variant, line)
        bounds = _stage_bounds(trials[0])
        if reference is not None and bounds != reference:
            for b, _ in bounds:  # another schedule: its boundaries in its colour
                ax.axvline(b, color=colors[variant], linestyle=":", linewidth=1)
    return reference or []


def _draw_stage_starts(ax, bounds: list[tuple[float, str]]) -> None:
    """Grey dashed lines where stages start, each named (left of it near the right edge)."""
    ax.xaxis.get_major_locator().set_params(integer=True)
    lo, hi = ax.get_xlim()
    for b, name in bounds:
        ax.axvline(b, color="0.35", linestyle="--", linewidth=0.8)
        right = (b - lo) / ((hi - lo) or 1) > 0.8
        ax.text(b, 0.99, f" {name} " if right else f" {name}",
                transform=ax.get_xaxis_transform(), fontsize=7, va="top",
                ha="right" if right else "left", color="0.3",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.3})


def plot_pareto(study: StudyResults, path: Path) -> Optional[Path]:
    """Per dataset: headline test acc50 vs device-hours per run, one point per variant, the
    Pareto front (nothing cheaper is at least as accurate) joined."""
    datasets = [d for d in study.datasets if compute_cost(study, d)]
    if not datasets:
        return None
    fig, axes = _panels(len(datasets), 3, lambda r, c: (max(4.8 * c, 6.5), 3.8 * r + 0.4))
    colors = dict(zip(study.variants, _colors(len(study.variants))))
    for ax, dataset in zip(axes, datasets):
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
        axes_ = [_axis(key, [t.config_value(key) for t in group], space.get(key) or {})
                 for key in keys]
        columns, ticks = [c for c, _ in axes_], [t for _, t in axes_]
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
        names = [short_key(k) for k in keys] + [f"{study.metric} (%)"]
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


def _axis(key: str, values: list[Any], domain: dict[str, Any]
          ) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """One searched key as a parallel-coordinates axis: each trial's position in [0, 1] and
    the ticks. Numeric domains are scaled (log for loguniform); others are categories, in
    the order the study declared them."""
    kind = next(iter(domain or {"choice": None}))
    numeric = kind in ("uniform", "loguniform", "int") and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        v = np.array(values, dtype=float)
        log = kind == "loguniform" and (v > 0).all()
        tv = np.log10(v) if log else v
        lo, hi = float(tv.min()), float(tv.max())
        span = hi - lo or 1.0
        tick_vals = np.linspace(lo, hi, 3) if hi > lo else np.array([lo])
        return ((tv - lo) / span if hi > lo else np.full(len(v), 0.5),
                [((t - lo) / span if hi > lo else 0.5, _num(10 ** t if log else t))
                 for t in tick_vals])
    labels = [value_label(v) for v in values]
    declared = [value_label(v) for v in (domain.get(kind) or [])] \
        if kind in ("choice", "grid") else []
    cats = [c for c in dict.fromkeys(declared + sorted(set(labels))) if c in labels]
    pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
    return np.array([pos[c] for c in labels]), [(pos[c], c) for c in cats]


def _num(x: float) -> str:
    return f"{x:.3g}"


def value_label(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(value_label(x) for x in v) + "]"
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
    fig, axes = _panels(len(datasets), 2, lambda r, c: (5.4 * c, 3.6 * r + 0.3))
    pick = max if study.mode == "max" else min
    for ax, dataset in zip(axes, datasets):
        group = [t for t in trials if t.dataset == dataset]
        x = np.array([n if n < 1 << 30 else i
                      for i, (n, _) in enumerate(trial_order(t.variant) for t in group)])
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
    epochs = sum(t.epochs for t in study.all_trials)
    fig.suptitle(f"{study.name}: optimisation history ({len(trials)} trials, "
                 f"{epochs} epochs in all)", fontsize=10)
    fig.savefig(path)
    return path
