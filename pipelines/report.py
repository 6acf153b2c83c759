"""Report a finished study: the paper table (Markdown, CSV, LaTeX), paired statistics, cost
and plots, written to {storage}/{study}/report/ and logged to the study's MLflow parent run.

    python pipelines/report.py search_spaces/demo.yaml         # the study file: runs/demo
    python pipelines/report.py demo                             # or its name: the same
    python pipelines/report.py hivg-components --storage /data/runs
    python pipelines/report.py demo --storage s3://BUCKET/PREFIX   # pulled, report pushed
    python pipelines/report.py 3f2c...e1 --storage runs   # the study of an MLflow parent run id

--seed seeds the bootstrap resampling of the statistics (not training).
"""
from __future__ import annotations

from pathlib import Path

from hivg.cli import default_storage, run_main
from hivg.cli_args import Parser, add_mlflow_uri


def study_name(study: str, name: str | None) -> str:
    """--name, else the study file's `name:` (or its stem), else the argument itself (a
    study name or an MLflow parent run id)."""
    from hivg.checks import check_name

    check_name("--name", name)
    if name:
        return name
    path = Path(study)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        import yaml

        from hivg.config import yaml_error

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise yaml_error(path, e) from None
        found = data.get("name") if isinstance(data, dict) else None
        return found if isinstance(found, str) and found else path.stem
    check_name("STUDY", study)
    return study


def main() -> int:
    p = Parser(description=__doc__)
    p.add_argument("study", help="the study file, a study name under --storage, or the "
                                 "study's MLflow parent run id")
    p.add_argument("--storage", default=default_storage(),
                   help="folder or s3://BUCKET/PREFIX holding the study (default: "
                        "$HIVG_STORAGE, else ./runs)")
    p.add_argument("--name", help="study name (default: the file's `name:` or its stem)")
    p.add_argument("--out", help="report folder (default: {storage}/{study}/report)")
    add_mlflow_uri(p)
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples, >= 100")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the bootstrap resampling (not of training)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    args = p.parse_args()
    from hivg.checks import check_mlflow_scheme, check_storage_readable

    name = study_name(args.study, args.name)
    check_mlflow_scheme(args.mlflow_uri)
    check_storage_readable(args.storage)
    from hivg.orchestration.study_report import report_study

    report_study(name, args.storage, args.out, mlflow_uri=args.mlflow_uri,
                 mlflow=not args.no_mlflow, n_boot=args.n_boot, seed=args.seed,
                 plots=not args.no_plots)
    return 0


if __name__ == "__main__":
    run_main(main)
