"""Analysis of finished studies: statistics, tables and plots. Needs no Ray and no MLflow.

    study       a study's folder read back (StudyResults), results.json's rows
    stats       McNemar's exact test (scipy), paired bootstrap, paired hits
    table       the paper table: cells per variant x dataset x split, the published numbers
    formats     the table as Markdown, CSV and LaTeX (the one table writer)
    cost        device-hours, energy, accuracy per device-hour
    plots       bars, learning curves, accuracy vs cost, parallel coordinates, history
    report      write_report: all of it into {storage}/{study}/report/
    search_efficiency   a search against the full grid: epochs spent, what each found

Run folders are read through hivg.run_folder (RunFolder, load_trials).
"""
from hivg.analysis.cost import CostRow, compute_cost, cost_markdown, trial_cost
from hivg.analysis.formats import stats_markdown, to_csv, to_latex, to_markdown
from hivg.analysis.report import write_report
from hivg.analysis.stats import PairedStat, compare, mcnemar_exact, paired_bootstrap, paired_hits
from hivg.analysis.study import StudyResults, load_study_results
from hivg.analysis.table import Cell, ReportTable, compute_table, load_published

__all__ = ["load_study_results", "write_report", "compute_table", "to_markdown", "to_csv",
           "to_latex", "stats_markdown", "mcnemar_exact", "paired_bootstrap", "paired_hits",
           "compare", "compute_cost", "cost_markdown", "trial_cost", "StudyResults", "Cell",
           "PairedStat", "ReportTable", "CostRow", "load_published"]
