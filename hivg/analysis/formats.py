"""The study table as text: Markdown (report.md and the study's table.md), tidy CSV, LaTeX
(booktabs), and the paired statistics and their notes. The one writer of results tables.

acc50 in %, mean ± std over seeds, and the difference of means to the baseline; a delta
whose bootstrap interval includes 0 is marked not significant (†).
"""
from __future__ import annotations

import csv
import io
import re
from typing import Optional

from hivg.analysis.stats import LEVEL
from hivg.analysis.table import Cell, ReportTable

NS = "†"                      # marks a delta whose bootstrap interval includes 0
NO_PAIRS = "?"                # marks a delta without paired predictions


def pct(x: float, digits: int = 2) -> str:
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
    core = pct(cell.mean) if cell.n == 1 else f"{pct(cell.mean)} {pm} {pct(cell.std)}"
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


def to_markdown(table: ReportTable, standalone: bool = False) -> str:
    """The table and its notes (`standalone`: for a file read without the report around it,
    the study's table.md)."""
    header = ["variant" if table.study.kind == "variants" else "trial"] + \
        [f"{d} {s}" for d, s in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for variant, cells in table.rows:
        parts = [_cell_text(table, cells.get(c)) for c in table.columns]
        lines.append(f"| {variant} | " + " | ".join(parts) + " |")
    for label, parts in _published_rows(table):
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    notes = footnotes(table, standalone)
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


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
