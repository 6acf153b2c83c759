"""Evaluate a trained checkpoint on a prepared dataset; write predictions, print acc50.

    python pipelines/evaluate.py --checkpoint runs/NAME/checkpoints/best.pt --dataset synthetic
    python pipelines/evaluate.py --checkpoint PATH --dataset refcoco --split testA --storage runs
    python pipelines/evaluate.py --storage s3://BUCKET/PREFIX --dataset synthetic \\
        --checkpoint s3://BUCKET/PREFIX/NAME/checkpoints/best.pt   # pulled; predictions pushed
"""
from __future__ import annotations

from pathlib import Path

from hivg.cli import default_storage, run_main
from hivg.cli_args import Parser


def parse_args():
    p = Parser(description=__doc__)
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint written by train.py (a path, or s3:// under --storage)")
    p.add_argument("--dataset", required=True, help="a prepared dataset name")
    p.add_argument("--split", action="append", help="split(s) to evaluate (default: all but train)")
    p.add_argument("--storage", default=default_storage(),
                   help="folder or s3://BUCKET/PREFIX holding data/ (default: $HIVG_STORAGE, "
                        "else ./runs)")
    p.add_argument("--out", help="folder for predictions (default: next to the checkpoint's run)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    from hivg.checks import check_device, check_storage_readable

    check_device(args.device)
    check_storage_readable(args.storage)
    from hivg.orchestration.remote_storage import open_storage
    from hivg.run_folder import RunFolder
    from hivg.train.inference import evaluate_checkpoint

    remote = open_storage(args.storage)
    storage = remote.mirror if remote else Path(args.storage)
    checkpoint = pull_inputs(remote, args.checkpoint, args.dataset) if remote else \
        Path(args.checkpoint)
    out = Path(args.out) if args.out else \
        RunFolder.of_checkpoint(checkpoint).path / "eval" / args.dataset
    results = evaluate_checkpoint(checkpoint, args.dataset, storage / "data",
                                  args.split, out, args.device)
    print(f"{'split':<10} {'count':>6} {'acc50':>7}")
    for split, r in results.items():
        print(f"{split:<10} {r['count']:>6} {r['acc50']:7.4f}")
        for t, acc in r["by_type"].items():
            print(f"  {t:<14} {acc:.4f}")
        print(f"  right object chosen (box centre inside the target) {r['located']:.4f}; "
              f"acc50 when it is {r['acc50_if_located']:.4f}")
    print(f"predictions: {out}")
    if remote and remote.mirror in out.resolve().parents:
        rel = out.resolve().relative_to(remote.mirror).as_posix()
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            remote.upload(path, f"{rel}/{path.relative_to(out).as_posix()}")
        print(f"pushed to {remote.url(rel)}")
    return 0


def pull_inputs(remote, checkpoint: str, dataset: str) -> Path:
    """The checkpoint (an s3:// URI under --storage, or a key relative to it) and the
    dataset's files, from the bucket into the mirror; the checkpoint's local path."""
    from hivg.errors import UserError

    rel = checkpoint
    if checkpoint.startswith("s3://"):
        if not checkpoint.startswith(remote.uri + "/"):
            raise UserError(f"--checkpoint {checkpoint}: expected a file under --storage "
                            f"{remote.uri}")
        rel = checkpoint[len(remote.uri) + 1:]
    local = remote.mirror / rel
    if not remote.exists(rel):
        raise UserError(f"--checkpoint {checkpoint}: not found at {remote.url(rel)}")
    remote.download(rel, local)
    for key, size in remote.sizes(f"data/{dataset}").items():
        target = remote.mirror / "data" / dataset / key
        if not (target.is_file() and target.stat().st_size == size):
            remote.download(f"data/{dataset}/{key}", target)
    return local


if __name__ == "__main__":
    run_main(main)
