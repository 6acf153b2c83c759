"""Report a finished study: the paper table (Markdown, CSV, LaTeX), paired statistics, cost
and plots, written to {storage}/{study}/report/ and logged to the study's MLflow parent run.

    python pipelines/report.py demo                       # runs/demo -> runs/demo/report/
    python pipelines/report.py hivg-components --storage /data/runs
    python pipelines/report.py 3f2c...e1 --storage runs   # the study of an MLflow parent run id
"""
from __future__ import annotations

import argparse

from hivg.cli import run_main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("study", help="a study name under --storage, or its MLflow parent run id")
    p.add_argument("--storage", default="runs", help="folder holding the study (default: runs)")
    p.add_argument("--out", help="report folder (default: {storage}/{study}/report)")
    p.add_argument("--mlflow-uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                        "sqlite:///{storage}/mlflow.db when that file exists)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    args = p.parse_args()
    from hivg.orchestration.study_report import report_study

    report_study(args.study, args.storage, args.out, mlflow_uri=args.mlflow_uri,
                 mlflow=not args.no_mlflow, n_boot=args.n_boot, seed=args.seed,
                 plots=not args.no_plots)
    return 0


if __name__ == "__main__":
    run_main(main)
