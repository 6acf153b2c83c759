"""The authors' data layout (linhuixiao/HiVG), accepted as they ship it.

Their loader (datasets/data_loader.py) takes two roots:
- `--split_root` (default `data`): `{split_root}/{folder}/{folder}_{split}.pth`, with the folders
  unc, unc+, gref_umd, gref, referit, flickr, mixup (their download unpacks as
  ref_data_shuffled/ with these folders);
- `--data_root`, the images: `{data_root}/other/images/mscoco/images/train2014` (COCO, for
  RefCOCO/+/g), `{data_root}/referit/images`, `{data_root}/Flickr30k/flickr30k-images`. Their
  README draws these folders under an `image_data/` folder; a root holding `image_data/` is
  accepted too.
With the split files in `data/` beside the image folders (their default `--split_root data`
run from that folder), the image root alone is enough.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from hivg.data.splits import FIVE_DATASETS, get_spec
from hivg.errors import DataError

# Image collection -> its folder under the image root.
IMAGE_FOLDERS = {
    "coco": Path("other/images/mscoco/images/train2014"),
    "referit": Path("referit/images"),
    "flickr": Path("Flickr30k/flickr30k-images"),
}
# Our dataset -> the image collection its rows name (mixup: all three).
DATASET_IMAGES = {"refcoco": "coco", "refcoco+": "coco", "refcocog-umd": "coco",
                  "refcocog-google": "coco", "referit": "referit", "flickr30k": "flickr"}
DEFAULT_SPLIT_FOLDER = "data"


def expand_datasets(names: list[str]) -> list[str]:
    """`all` -> the five datasets; names checked; order kept, duplicates dropped."""
    out: list[str] = []
    for name in names:
        for d in (FIVE_DATASETS if name == "all" else [name]):
            spec = get_spec(d)
            if spec.name == "synthetic":
                raise DataError("--dataset synthetic is generated, not read from the authors' "
                                "layout (run it on its own)")
            if d not in out:
                out.append(d)
    return out


def image_root(root: str | Path) -> Path:
    """The folder that holds other/, referit/ and Flickr30k/ (or their README's image_data/)."""
    root = Path(root)
    if not any((root / f.parts[0]).is_dir() for f in IMAGE_FOLDERS.values()) \
            and (root / "image_data").is_dir():
        return root / "image_data"
    return root


def split_root(images: Path, given: Optional[str | Path]) -> Path:
    return Path(given) if given else images / DEFAULT_SPLIT_FOLDER


def dataset_sources(dataset: str, splits: Path, images: Path
                    ) -> tuple[Path, Path | Mapping[str, Path]]:
    """(the dataset's split-file folder, its image folder, or for mixup {source: folder})."""
    folder = splits / get_spec(dataset).folder
    if dataset == "mixup":
        return folder, {source: images / sub for source, sub in IMAGE_FOLDERS.items()}
    return folder, images / IMAGE_FOLDERS[DATASET_IMAGES[dataset]]


def check_layout(datasets: list[str], splits: Path, images: Path) -> None:
    """Every split folder and image folder the datasets need, all checked before any work;
    one DataError listing each one missing."""
    missing: list[str] = []
    for d in datasets:
        split_folder, image_dirs = dataset_sources(d, splits, images)
        if not split_folder.is_dir():
            missing.append(f"{d}: {split_folder}/")
        for folder in (image_dirs.values() if isinstance(image_dirs, Mapping) else [image_dirs]):
            if not folder.is_dir() and f"images {folder}/" not in missing:
                missing.append(f"images {folder}/")
    if missing:
        raise DataError(f"the authors' layout (split root {splits}, image root {images}) lacks "
                        + "; ".join(missing))
