"""Perception or reasoning: what limits grounding on the synthetic benchmark? A linear read-out
of CLIP's frozen patch tokens, and a small fusion trained to pick the target's cell from CLIP's
patches or from the generator's ground truth (hivg.bench.probe says how).

    python pipelines/probe_perception.py                      # the tiny preset's CLIP, runs/
    python pipelines/probe_perception.py --epochs 6 --storage /tmp/runs

Results are printed and written to {storage}/probes/perception.json.
"""
from __future__ import annotations

from pathlib import Path

from hivg.cli import default_storage, resolve_config, run_main, with_storage_defaults
from hivg.cli_args import Parser


def parse_args():
    p = Parser(description=__doc__)
    p.add_argument("--config", help="YAML config (default: the tiny preset)")
    p.add_argument("--storage", default=default_storage(),
                   help="folder with data/ and weights/ (default: $HIVG_STORAGE, else ./runs)")
    p.add_argument("--epochs", type=int, default=3, help="selection probe epochs, >= 1")
    p.add_argument("--train-samples", type=int, help="use the first N training expressions")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the probes' initialisation and data order")
    p.add_argument("overrides", nargs="*", help="dotted config overrides")
    return p.parse_intermixed_args()


def main() -> int:
    args = parse_args()
    from hivg.checks import check_count, check_storage

    check_count("--epochs", args.epochs, 1)
    check_count("--train-samples", args.train_samples, 1)
    storage = Path(args.storage)
    config = with_storage_defaults(resolve_config(args.config, "tiny", args.overrides), storage)
    check_storage(args.storage)
    from hivg.bench.probe import run_probes

    run_probes(config, storage, args.epochs, args.train_samples, args.seed)
    return 0


if __name__ == "__main__":
    run_main(main)
