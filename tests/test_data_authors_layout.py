"""The authors' data layout as they ship it (linhuixiao/HiVG: datasets/data_loader.py and their
README): split files in data/{unc,unc+,gref_umd,referit,flickr}/{folder}_{split}.pth beside the
image folders other/images/mscoco/images/train2014, referit/images and Flickr30k/flickr30k-images.
A tree of made-up rows in that layout becomes all five datasets in one command."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from hivg.data.manifest import list_splits, read_manifest
from hivg.data.prepare import prepare_authors_layout
from hivg.errors import DataError

REPO = Path(__file__).resolve().parents[1]

COCO = "COCO_train2014_000000581857.jpg"       # 64 x 48
REFERIT = "8756.jpg"                            # 50 x 40
FLICKR = "1000092795.jpg"                       # 60 x 30

# Per published folder: its splits and one made-up row in the tuple shape the authors use
# (RefCOCO family: size dict, box xywh, polygon; ReferIt: mask name, box xyxy; Flickr: xyxy).
COCO_ROW = (COCO, {"height": 48, "width": 64}, [8.0, 6.0, 20.0, 30.0], "The Man ON the left",
            [[8.0, 6.0, 28.0, 6.0, 28.0, 36.0]])
TREE = {
    "unc": (("train", "val", "testA", "testB"), COCO_ROW),
    "unc+": (("train", "val", "testA", "testB"), COCO_ROW),
    "gref_umd": (("train", "val", "test"), COCO_ROW),
    "referit": (("train", "val", "test"), (REFERIT, "8756_2.mat", [5, 4, 45, 30], "Sky", [])),
    "flickr": (("train", "val", "test"), (FLICKR, [10, 2, 50, 28], "A dog")),
}
# Our name -> (published folder, the image folder its rows point into, xyxy box).
EXPECTED = {
    "refcoco": ("unc", "other/images/mscoco/images/train2014", (8, 6, 28, 36)),
    "refcoco+": ("unc+", "other/images/mscoco/images/train2014", (8, 6, 28, 36)),
    "refcocog-umd": ("gref_umd", "other/images/mscoco/images/train2014", (8, 6, 28, 36)),
    "referit": ("referit", "referit/images", (5, 4, 45, 30)),
    "flickr30k": ("flickr", "Flickr30k/flickr30k-images", (10, 2, 50, 28)),
}


def authors_tree(root: Path, split_folder: str = "data") -> Path:
    for sub, name, size in (("other/images/mscoco/images/train2014", COCO, (64, 48)),
                            ("referit/images", REFERIT, (50, 40)),
                            ("Flickr30k/flickr30k-images", FLICKR, (60, 30))):
        (root / sub).mkdir(parents=True)
        Image.new("RGB", size, (120, 80, 40)).save(root / sub / name)
    for folder, (splits, row) in TREE.items():
        (root / split_folder / folder).mkdir(parents=True)
        for i, split in enumerate(splits):
            rows = [row] * (i + 2)  # a different count per split
            torch.save(rows, root / split_folder / folder / f"{folder}_{split}.pth")
    return root


def test_all_five_datasets_from_the_authors_tree_in_one_command(tmp_path):
    root = authors_tree(tmp_path / "HiVG")
    storage = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "prepare_data.py"), "--dataset", "all",
         "--image-root", str(root), "--storage", str(storage)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout + result.stderr
    data = storage / "data"
    for dataset, (folder, images, box) in EXPECTED.items():
        splits, _row = TREE[folder]
        assert list_splits(data, dataset) == list(splits), dataset
        for i, split in enumerate(splits):
            table = read_manifest(data, dataset, split).to_pylist()
            assert len(table) == i + 2, (dataset, split)
            row = table[0]
            assert row["image_path"].startswith(str((root / images).resolve())), row
            assert (row["x1"], row["y1"], row["x2"], row["y2"]) == box, dataset
            assert row["phrase"] == _row_phrase(folder).lower()
        assert f"dataset {dataset}" in result.stdout


def _row_phrase(folder: str) -> str:
    row = TREE[folder][1]
    return row[2] if folder == "flickr" else row[3]


def test_the_readme_image_data_folder_and_a_separate_split_root(tmp_path):
    """Their README draws the images under image_data/ and the splits as ref_data_shuffled/."""
    root = authors_tree(tmp_path / "dl", split_folder="ref_data_shuffled")
    (tmp_path / "dl" / "image_data").mkdir()
    for sub in ("other", "referit", "Flickr30k"):
        (root / sub).rename(root / "image_data" / sub)
    reports = prepare_authors_layout(["referit", "refcoco"], root,
                                     split_root=root / "ref_data_shuffled",
                                     storage=tmp_path / "runs")
    assert [r.dataset for r in reports] == ["referit", "refcoco"]
    assert list_splits(tmp_path / "runs" / "data", "refcoco") == ["train", "val", "testA", "testB"]


def test_missing_folders_are_all_named_before_anything_is_written(tmp_path):
    root = authors_tree(tmp_path / "HiVG")
    for folder in ("data/referit", "Flickr30k"):
        for path in sorted((root / folder).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (root / folder).rmdir()
    with pytest.raises(DataError) as caught:
        prepare_authors_layout(["all"], root, storage=tmp_path / "runs")
    message = str(caught.value)
    assert f"referit: {root / 'data' / 'referit'}/" in message
    assert f"images {root / 'Flickr30k' / 'flickr30k-images'}/" in message
    assert "\n" not in message
    assert not (tmp_path / "runs").exists()
