"""Report a finished study: the paper table (Markdown, CSV, LaTeX), paired statistics, cost
and plots, written to {storage}/{study}/report/ and logged to the study's MLflow parent run.

    python pipelines/report.py demo                       # runs/demo -> runs/demo/report/
    python pipelines/report.py hivg-components --storage /data/runs
    python pipelines/report.py 3f2c...e1 --storage runs   # the study of an MLflow parent run id
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hivg.cli import run_main  # noqa: E402

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


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

    from hivg.errors import UserError
    from hivg.orchestration import report

    storage = Path(args.storage)
    if args.n_boot < 100:
        raise UserError(f"--n-boot {args.n_boot}: expected at least 100 resamples")
    uri = None if args.no_mlflow else _tracking_uri(args.mlflow_uri, storage)
    name = args.study
    if not (storage / name / "results.json").is_file() and _RUN_ID.match(name) and uri:
        found = report.study_name_of_run(uri, name)
        if found is None:
            raise UserError(f"{name}: neither a study under {storage} nor a study's MLflow "
                            f"parent run at {uri}")
        name = found
    out = report.write_report(storage, name, args.out, n_boot=args.n_boot, seed=args.seed,
                              plots=not args.no_plots)
    print((out / "table.md").read_text())
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    print(f"report: {out / 'report.md'}")
    print(f"files:  {', '.join(files)}")
    if uri:
        run_id = report.log_report_to_study_run(out, uri, name)
        if run_id:
            print(f"logged to MLflow run {run_id} (artifacts: report/) at {uri}")
        else:
            print(f"no MLflow parent run for study {name} at {uri}; not logged")
    return 0


def _tracking_uri(cli_uri: str | None, storage: Path) -> str | None:
    """An explicit URI or $MLFLOW_TRACKING_URI; else the storage's SQLite store, only when it
    exists (a report never creates an empty tracking store)."""
    import os

    if cli_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return cli_uri or os.environ["MLFLOW_TRACKING_URI"]
    db = storage / "mlflow.db"
    return f"sqlite:///{db.resolve()}" if db.is_file() else None


if __name__ == "__main__":
    run_main(main)
