"""Dataset names, their published folders, splits and row formats.

Our names differ from the published folder names (the split files are
`{splits_dir}/{folder}_{split}.pth`); this table is the only place that knows both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hivg.errors import DataError

# Row formats of the published split files (tuples of plain Python values):
#   refcoco: (image_file, {"height": H, "width": W}, [x, y, w, h], phrase, polygon)
#   referit: (image_file, mask_name, [x1, y1, x2, y2], phrase, anything); size from the image
#   flickr:  (image_file, [x1, y1, x2, y2], phrase); size from the image
#   mixup:   refcoco rows (COCO images) mixed with referit-shaped rows whose index 1 is the
#            source name "referit" or "flickr" (the released code's convention)
ROW_FORMATS = ("refcoco", "referit", "flickr", "mixup")


@dataclass(frozen=True)
class DatasetSpec:
    name: str                 # our name (manifests, configs)
    folder: str               # published folder name and split-file prefix
    splits: tuple[str, ...]   # published splits, in reporting order
    row_format: str           # one of ROW_FORMATS

    def split_file(self, splits_dir: str | Path, split: str) -> Path:
        return Path(splits_dir) / f"{self.folder}_{split}.pth"


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("refcoco", "unc", ("train", "val", "testA", "testB"), "refcoco"),
    DatasetSpec("refcoco+", "unc+", ("train", "val", "testA", "testB"), "refcoco"),
    DatasetSpec("refcocog-umd", "gref_umd", ("train", "val", "test"), "refcoco"),
    DatasetSpec("refcocog-google", "gref", ("train", "val"), "refcoco"),
    DatasetSpec("referit", "referit", ("train", "val", "test"), "referit"),
    DatasetSpec("flickr30k", "flickr", ("train", "val", "test"), "flickr"),
    DatasetSpec("mixup", "mixup", ("train", "val", "test"), "mixup"),
    DatasetSpec("synthetic", "synthetic", ("train", "val", "test"), "refcoco"),
)}

# "The five datasets" (the paper's Table 1 columns).
FIVE_DATASETS = ("refcoco", "refcoco+", "refcocog-umd", "referit", "flickr30k")

# Train sets that make up mixup when no published mixup file is given. RefCOCOg-google is
# left out: its train images overlap RefCOCOg-umd's val/test images.
MIXUP_TRAIN_SOURCES = FIVE_DATASETS
MIXUP_EVAL_SOURCE = "refcocog-umd"

# Order used when listing prepared splits.
SPLIT_ORDER = ("train", "val", "test", "testA", "testB")


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (expected one of {', '.join(DATASETS)})")
    return DATASETS[name]


def split_sort_key(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)
