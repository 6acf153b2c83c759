"""Run an ablation study: named variants x datasets x seeds, every trial in MLflow.

    python pipelines/ablate.py                                   # search_spaces/demo.yaml
    python pipelines/ablate.py search_spaces/hivg_components.yaml --address auto
    python pipelines/ablate.py STUDY.yaml --resume               # continue where it stopped
    python pipelines/ablate.py --list --storage s3://BUCKET/studies  # the studies there
    python pipelines/ablate.py --dry-run                         # the trials, nothing run

Each trial's seed (initialisation, data order, augmentation) comes from the file's `seeds:`.
"""
from __future__ import annotations

from pathlib import Path

from hivg.cli import add_study_flags, run_main, run_study_command
from hivg.cli_args import Parser

DEMO = Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"


def main() -> int:
    p = Parser(description=__doc__)
    p.add_argument("study", nargs="?", default=str(DEMO), help="study YAML with `variants:`")
    add_study_flags(p)
    args = p.parse_args()
    return run_study_command(args.study, "variants", args)


if __name__ == "__main__":
    run_main(main)
