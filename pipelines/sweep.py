"""Search a space of HiVG design choices: Optuna TPE + ASHA on Ray Tune (or the full grid).

    python pipelines/sweep.py search_spaces/hilora_ranks.yaml --num-samples 24
    python pipelines/sweep.py SPACE.yaml --grid                  # every grid point
    python pipelines/sweep.py SPACE.yaml --resume                # continue where it stopped
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _study_cli import add_study_flags, options_from, prepare, print_results  # noqa: E402

from hivg.cli import run_main  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("space", help="search space YAML with `space:`")
    add_study_flags(p)
    p.add_argument("--grid", action="store_true", help="the full grid instead of TPE")
    p.add_argument("--no-asha", action="store_true", help="no early stopping")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the TPE sampler")
    args = p.parse_args()
    from hivg.errors import UserError
    from hivg.orchestration.search_space import load_study
    from hivg.orchestration.tune import run_study, study_storage

    study = load_study(Path(args.space))
    if study.kind != "space":
        raise UserError(f"{args.space}: an ablation study (variants); run it with "
                        "pipelines/ablate.py")
    storage, remote = study_storage(args.storage)
    study, plan = prepare(study, storage, args=args)
    table = run_study(study, args.storage, options_from(
        args, grid=args.grid, scheduler=False if args.no_asha else None,
        search_seed=args.search_seed))
    print_results(table, storage, remote, plan)
    return 0


if __name__ == "__main__":
    run_main(main)
