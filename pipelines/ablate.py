"""Run an ablation study: named variants x datasets x seeds, every trial in MLflow.

    python pipelines/ablate.py                                   # search_spaces/demo.yaml
    python pipelines/ablate.py search_spaces/hivg_components.yaml --address auto
    python pipelines/ablate.py STUDY.yaml --resume               # continue where it stopped
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _study_cli import add_study_flags, options_from, prepare, print_results  # noqa: E402

from hivg.cli import run_main  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("study", nargs="?", default=str(DEMO), help="study YAML with `variants:`")
    add_study_flags(p)
    args = p.parse_args()
    from hivg.errors import UserError
    from hivg.orchestration.search_space import load_study
    from hivg.orchestration.tune import run_study, study_storage

    study = load_study(Path(args.study))
    if study.kind != "variants":
        raise UserError(f"{args.study}: a search space; run it with pipelines/sweep.py")
    storage, remote = study_storage(args.storage)
    study, plan = prepare(study, storage, args=args)
    table = run_study(study, args.storage, options_from(args))
    print_results(table, storage, remote, plan)
    return 0


if __name__ == "__main__":
    run_main(main)
