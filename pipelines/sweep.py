"""Search a space of HiVG design choices: Optuna TPE + ASHA on Ray Tune (or the full grid).

    python pipelines/sweep.py search_spaces/hilora_ranks.yaml --num-samples 24
    python pipelines/sweep.py SPACE.yaml --grid                  # every grid point
    python pipelines/sweep.py SPACE.yaml --resume                # continue where it stopped
    python pipelines/sweep.py SPACE.yaml --extend 8              # 8 more trials, TPE's history kept
    python pipelines/sweep.py --list --storage s3://BUCKET/studies   # the studies there
    python pipelines/sweep.py SPACE.yaml --dry-run               # the space, nothing run

--search-seed seeds the TPE sampler; each trial's training seed is the file's `seeds:`.
"""
from __future__ import annotations

from hivg.cli import add_study_flags, run_main, run_study_command
from hivg.cli_args import Parser
from hivg.errors import UserError


def main() -> int:
    p = Parser(description=__doc__)
    p.add_argument("space", nargs="?", help="search space YAML with `space:`")
    add_study_flags(p)
    p.add_argument("--num-samples", type=int,
                   help="trials per dataset, >= 1 (default: the file's num_samples)")
    p.add_argument("--grid", action="store_true", help="the full grid instead of TPE")
    p.add_argument("--no-asha", action="store_true", help="no early stopping")
    p.add_argument("--search-seed", type=int, default=0,
                   help="seed of the TPE sampler (not of training: that is the file's seeds:)")
    p.add_argument("--extend", type=int, metavar="N",
                   help="N more trials per dataset for a search that ran; TPE goes on from "
                        "the trials it has (finished ones are not run again)")
    args = p.parse_args()
    if args.extend is not None and (args.extend < 1 or args.grid):
        raise UserError("--extend N: N must be at least 1" if args.extend < 1 else
                        "--extend: a grid has no more points; it extends a TPE search")
    return run_study_command(args.space, "space", args, grid=args.grid,
                             scheduler=False if args.no_asha else None,
                             search_seed=args.search_seed, extend=args.extend)


if __name__ == "__main__":
    run_main(main)
