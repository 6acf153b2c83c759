"""Prepare a dataset: validated Parquet manifests (and optional image shards).

    python pipelines/prepare_data.py --dataset refcoco --splits-dir DIR --images-dir DIR
    python pipelines/prepare_data.py --dataset mixup --splits-dir DIR \\
        --images-dir coco=DIR referit=DIR flickr=DIR     # from the published mixup files
    python pipelines/prepare_data.py --dataset mixup     # union of the prepared train sets
    python pipelines/prepare_data.py --dataset synthetic [--seed N]
    python pipelines/prepare_data.py --dataset all --image-root DIR [--split-root DIR]
        # the authors' layout as they ship it: DIR/other/images/mscoco/images/train2014,
        # DIR/referit/images, DIR/Flickr30k/flickr30k-images; split files in
        # SPLITS/{unc,unc+,gref_umd,referit,flickr,...}/*.pth (default SPLITS: DIR/data)

Manifests go to {storage}/data/{dataset}/{split}.parquet. Exit status: 0 ok, 2 on bad
input (one line on stderr), 1 on an internal failure.
"""
from __future__ import annotations

from hivg.cli import default_storage, run_main
from hivg.cli_args import Parser
from hivg.data.splits import DATASETS


def parse_args():
    p = Parser(description=__doc__)
    p.add_argument("--dataset", required=True, nargs="+", metavar="NAME",
                   help=f"one of {', '.join(DATASETS)}; with --image-root several, or all "
                        "(the five)")
    p.add_argument("--image-root", metavar="DIR",
                   help="the authors' image root (their --data_root): other/, referit/, "
                        "Flickr30k/ inside")
    p.add_argument("--split-root", metavar="DIR",
                   help="the authors' split root (their --split_root): one folder per dataset "
                        "(default: IMAGE_ROOT/data)")
    p.add_argument("--splits-dir", help="folder holding the dataset's FOLDER_SPLIT.pth files")
    p.add_argument("--images-dir", nargs="+", metavar="DIR",
                   help="image folder (mixup: coco=DIR referit=DIR flickr=DIR)")
    p.add_argument("--storage", default=default_storage(),
                   help="output root (default: $HIVG_STORAGE, else ./runs)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic benchmark's generator (not of training)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="drop invalid rows and count them instead of stopping at the first")
    p.add_argument("--pack-images", action="store_true", help="also write image shards")
    p.add_argument("--pack-max-side", type=int, metavar="N",
                   help="pre-resize packed images to a long side of at most N pixels")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    from hivg.checks import check_count, check_storage
    from hivg.errors import UserError

    check_count("--pack-max-side", args.pack_max_side, 1)
    check_storage(args.storage)
    from hivg.data.prepare import parse_images_dirs, prepare, prepare_authors_layout
    if args.image_root or args.split_root:
        if not args.image_root or args.splits_dir or args.images_dir:
            raise UserError("--image-root (and optionally --split-root) read the authors' "
                            "layout; do not mix them with --splits-dir/--images-dir")
        for report in prepare_authors_layout(
                args.dataset, args.image_root, args.split_root, args.storage,
                skip_invalid=args.skip_invalid, pack_images=args.pack_images,
                pack_max_side=args.pack_max_side):
            print(f"dataset {report.dataset}")
            print(report.format())
        return 0
    if len(args.dataset) != 1 or args.dataset[0] == "all":
        raise UserError(f"--dataset {' '.join(args.dataset)}: several datasets are read from "
                        "the authors' layout (give --image-root); otherwise one at a time")
    report = prepare(args.dataset[0], args.storage, splits_dir=args.splits_dir,
                     images_dir=parse_images_dirs(args.images_dir), seed=args.seed,
                     skip_invalid=args.skip_invalid, pack_images=args.pack_images,
                     pack_max_side=args.pack_max_side)
    print(f"dataset {report.dataset}")
    print(report.format())
    return 0


if __name__ == "__main__":
    run_main(main)
