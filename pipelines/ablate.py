"""Run an ablation study: named variants x datasets x seeds, every trial in MLflow.

    python pipelines/ablate.py                                   # search_spaces/demo.yaml
    python pipelines/ablate.py search_spaces/hivg_components.yaml --address auto
    python pipelines/ablate.py STUDY.yaml --resume               # continue where it stopped
    python pipelines/ablate.py --list --storage s3://BUCKET/studies  # the studies there
"""
from __future__ import annotations

import argparse
from pathlib import Path

from hivg.cli import add_study_flags, run_main, run_study_command

DEMO = Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("study", nargs="?", default=str(DEMO), help="study YAML with `variants:`")
    add_study_flags(p)
    args = p.parse_args()
    return run_study_command(args.study, "variants", args)


if __name__ == "__main__":
    run_main(main)
