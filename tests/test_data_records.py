"""Published split files -> validated manifests: every dataset's tuple shape, with traps."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from hivg.data.manifest import list_splits, manifest_path, read_manifest
from hivg.data.prepare import prepare, prepare_dataset
from hivg.data.records import read_split_file
from hivg.data.splits import DATASETS, get_spec
from hivg.errors import DataError, UserError

REPO = Path(__file__).resolve().parents[1]
SIZE_A = {"height": 30, "width": 40}  # a.jpg is 40 x 30

# (published tuple, expected (image, width, height, xyxy box, phrase)). Traps: RefCOCO boxes
# are xywh, the others xyxy, and each box below is valid under both readings, so only the
# right conversion gives the expected row; phrases need lower-casing and whitespace folding;
# boxes touch the image border or overshoot it by less than the 1 px tolerance (clipped).
REFCOCO_ROWS = [
    (("a.jpg", SIZE_A, [4, 5, 10, 12], "The  RED\tCar ", [[4.0, 5.0, 14.0, 5.0, 14.0, 17.0]]),
     ("a.jpg", 40, 30, (4, 5, 14, 17), "the red car")),
    (("b.png", {"height": 50, "width": 25}, [0, 0, 25, 50], "WHOLE image", []),
     ("b.png", 25, 50, (0, 0, 25, 50), "whole image")),
    (("a.jpg", SIZE_A, [30.5, 20.0, 10.0, 10.5], "Edge slop", []),
     ("a.jpg", 40, 30, (30.5, 20, 40, 30), "edge slop")),
]
REFERIT_ROWS = [
    (("a.jpg", "a_1.pth", [4, 5, 10, 12], "Sky", []), ("a.jpg", 40, 30, (4, 5, 10, 12), "sky")),
    (("b.png", "b_3.pth", [0, 0, 25, 50], "all OF it", []),
     ("b.png", 25, 50, (0, 0, 25, 50), "all of it")),
]
FLICKR_ROWS = [
    (("a.jpg", [4, 5, 10, 12], "A  Man"), ("a.jpg", 40, 30, (4, 5, 10, 12), "a man")),
    (("b.png", [1, 2, 24, 49], "two\nDogs"), ("b.png", 25, 50, (1, 2, 24, 49), "two dogs")),
]
# Mixup: COCO rows as RefCOCO; other rows say their source at index 1 (released convention).
MIXUP_ROWS = [
    (REFCOCO_ROWS[0][0], ("coco/a.jpg",) + REFCOCO_ROWS[0][1][1:]),
    (("a.jpg", "referit", [4, 5, 10, 12], "Sky", []), ("referit/a.jpg", 40, 30, (4, 5, 10, 12), "sky")),
    (("b.png", "flickr", [1, 2, 24, 49], "Dog", None), ("flickr/b.png", 25, 50, (1, 2, 24, 49), "dog")),
]
ROWS_BY_FORMAT = {"refcoco": REFCOCO_ROWS, "referit": REFERIT_ROWS, "flickr": FLICKR_ROWS,
                  "mixup": MIXUP_ROWS}
PUBLISHED = [name for name in DATASETS if name != "synthetic"]


def write_images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a.jpg")
    Image.new("RGB", (25, 50), (10, 200, 10)).save(folder / "b.png")
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    return folder


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images")


def write_splits(folder: Path, dataset: str, rows: list, splits=None) -> Path:
    spec = get_spec(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits or spec.splits:
        torch.save(list(rows), spec.split_file(folder, split))
    return folder


def images_for(dataset: str, images: Path):
    if dataset != "mixup":
        return images
    return {s: write_images(images.parent / "mixup_images" / s) for s in ("coco", "referit", "flickr")}


@pytest.mark.parametrize("dataset", PUBLISHED)
def test_every_dataset_converts_row_by_row(dataset, images, tmp_path):
    spec = get_spec(dataset)
    cases = ROWS_BY_FORMAT[spec.row_format]
    splits_dir = write_splits(tmp_path / "splits", dataset, [c[0] for c in cases])
    image_root = images_for(dataset, images)
    report = prepare_dataset(dataset, splits_dir, image_root, tmp_path / "runs")

    data_dir = tmp_path / "runs" / "data"
    assert list_splits(data_dir, dataset) == list(spec.splits)
    assert [s.rows for s in report.splits] == [len(cases)] * len(spec.splits)
    base = images if dataset != "mixup" else images.parent / "mixup_images"
    for split in spec.splits:
        rows = read_manifest(data_dir, dataset, split).to_pylist()
        assert len(rows) == len(cases)
        for i, (row, (_, expected)) in enumerate(zip(rows, cases)):
            image, width, height, box, phrase = expected
            assert row["id"] == f"{dataset}/{split}/{i}"
            assert (row["dataset"], row["split"]) == (dataset, split)
            assert row["image_path"] == str((base / image).resolve())
            assert (row["image_width"], row["image_height"]) == (width, height)
            assert (row["x1"], row["y1"], row["x2"], row["y2"]) == pytest.approx(box)
            assert row["phrase"] == phrase
            assert row["expr_type"] == ""


# (reason, bad row) for a RefCOCO reader; each file is [a valid row, the bad row].
BAD_ROWS = [
    ("box outside image", ("a.jpg", SIZE_A, [30, 20, 20, 5], "x", [])),
    ("box outside image", ("a.jpg", SIZE_A, [-3, 0, 5, 5], "x", [])),
    ("non-positive box size", ("a.jpg", SIZE_A, [5, 5, 0, 10], "x", [])),
    ("non-positive box size", ("a.jpg", SIZE_A, [5, 5, 4, -1], "x", [])),
    ("empty phrase", ("a.jpg", SIZE_A, [1, 2, 3, 4], " \t ", [])),
    ("missing image", ("nope.jpg", SIZE_A, [1, 2, 3, 4], "x", [])),
    ("unreadable image", ("broken.jpg", SIZE_A, [1, 2, 3, 4], "x", [])),
    ("image size mismatch", ("a.jpg", {"height": 40, "width": 30}, [1, 2, 3, 4], "x", [])),
    ("malformed tuple", ("a.jpg", SIZE_A, [1, 2, 3], "x", [])),
    ("malformed tuple", ("a.jpg", SIZE_A, [1, 2, 3, math.nan], "x", [])),
    ("malformed tuple", ("a.jpg", SIZE_A, [1, 2, 3, 4], 7, [])),
    ("malformed tuple", ("a.jpg", {"h": 30}, [1, 2, 3, 4], "x", [])),
    ("malformed tuple", ("a.jpg", SIZE_A, [1, 2, 3, 4])),
    ("malformed tuple", ("a.jpg", SIZE_A, [1, 2, 3, 4], "x")),
    ("malformed tuple", "just a string"),
    ("tuple shape of another dataset", ("a.jpg", [1, 2, 3, 4], "x")),
    ("tuple shape of another dataset", ("a.jpg", "a_1.pth", [1, 2, 3, 4], "x", [])),
]


@pytest.mark.parametrize("reason,bad_row", BAD_ROWS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD_ROWS)])
def test_invalid_rows_are_rejected_with_file_row_and_reason(reason, bad_row, images, tmp_path):
    path = tmp_path / "unc_train.pth"
    torch.save([REFCOCO_ROWS[0][0], bad_row], path)
    spec = get_spec("refcoco")
    with pytest.raises(DataError) as err:
        read_split_file(spec, "train", path, images)
    message = str(err.value)
    assert message.startswith(f"{path}: row 1: {reason}: ")
    assert "\n" not in message

    read = read_split_file(spec, "train", path, images, skip_invalid=True)
    assert [r.id for r in read.records] == ["refcoco/train/0"]
    assert dict(read.skipped) == {reason: 1}


@pytest.mark.parametrize("rows,reader,named", [
    (FLICKR_ROWS, "refcoco", "Flickr30k"),
    (REFCOCO_ROWS, "flickr30k", "RefCOCO"),
    (REFERIT_ROWS, "refcoco+", "ReferIt"),
    (REFCOCO_ROWS, "referit", "RefCOCO"),
])
def test_a_file_of_another_dataset_is_named_and_never_skipped(rows, reader, named, images, tmp_path):
    path = tmp_path / "split.pth"
    torch.save([r for r, _ in rows], path)
    spec = get_spec(reader)
    with pytest.raises(DataError, match=rf"row 0: tuple shape of another dataset: the row is a {named}"):
        read_split_file(spec, "train", path, images)
    with pytest.raises(DataError, match="every row has another dataset's tuple shape"):
        read_split_file(spec, "train", path, images, skip_invalid=True)


def test_skip_invalid_counts_per_reason_and_keeps_the_rest(images, tmp_path):
    rows = [c[0] for c in REFCOCO_ROWS] + [r for _, r in BAD_ROWS]
    splits_dir = write_splits(tmp_path / "splits", "refcoco", rows, splits=["train"])
    report = prepare_dataset("refcoco", splits_dir, images, tmp_path / "runs", skip_invalid=True)
    (train,) = report.splits
    expected: dict[str, int] = {}
    for reason, _ in BAD_ROWS:
        expected[reason] = expected.get(reason, 0) + 1
    assert train.skipped == expected
    assert (train.rows, train.rows_in_file) == (len(REFCOCO_ROWS), len(rows))
    assert report.missing == ["val", "testA", "testB"]
    table = read_manifest(tmp_path / "runs" / "data", "refcoco", "train")
    assert table.column("id").to_pylist() == [f"refcoco/train/{i}" for i in range(3)]


def test_strict_failure_writes_no_manifest(images, tmp_path):
    splits_dir = write_splits(tmp_path / "splits", "refcoco", [REFCOCO_ROWS[0][0]])
    torch.save([REFCOCO_ROWS[0][0], BAD_ROWS[0][1]], get_spec("refcoco").split_file(splits_dir, "testB"))
    with pytest.raises(DataError, match="unc_testB.pth: row 1: box outside image"):
        prepare_dataset("refcoco", splits_dir, images, tmp_path / "runs")
    assert list_splits(tmp_path / "runs" / "data", "refcoco") == []


@pytest.mark.parametrize("content,message", [
    (b"definitely not a pickle", "cannot read the split file"),
    ({"rows": []}, "expected a list of tuples"),
    ([], "the split file has no rows"),
])
def test_unusable_split_files(content, message, images, tmp_path):
    path = tmp_path / "unc_train.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(DataError, match=message):
        read_split_file(get_spec("refcoco"), "train", path, images)


def test_user_errors_for_names_and_folders(images, tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'coco-stuff'"):
        prepare("coco-stuff", tmp_path, splits_dir=tmp_path, images_dir=images)
    with pytest.raises(DataError, match="no refcoco split files"):
        prepare("refcoco", tmp_path, splits_dir=tmp_path, images_dir=images)
    with pytest.raises(DataError, match="not a folder"):
        prepare("refcoco", tmp_path, splits_dir=tmp_path / "missing", images_dir=images)
    with pytest.raises(UserError, match="needs --splits-dir and --images-dir"):
        prepare("referit", tmp_path)
    with pytest.raises(UserError, match="coco=DIR referit=DIR flickr=DIR"):
        prepare("mixup", tmp_path, splits_dir=tmp_path, images_dir=images)


def test_mixup_union_of_prepared_train_sets(images, tmp_path):
    storage = tmp_path / "runs"
    with pytest.raises(DataError, match="no prepared train sets"):
        prepare("mixup", storage)
    for dataset in ("refcoco", "referit", "refcocog-umd", "refcocog-google"):
        if dataset == "refcocog-umd":
            with pytest.raises(DataError, match="mixup takes val/test from refcocog-umd"):
                prepare("mixup", storage)
        rows = [c[0] for c in ROWS_BY_FORMAT[get_spec(dataset).row_format]]
        prepare_dataset(dataset, write_splits(tmp_path / dataset, dataset, rows), images, storage)

    report = prepare("mixup", storage)
    data_dir = storage / "data"
    train = read_manifest(data_dir, "mixup", "train")
    expected_ids = [f"{d}/train/{i}" for d, n in (("refcoco", 3), ("refcocog-umd", 3), ("referit", 2))
                    for i in range(n)]
    assert train.column("id").to_pylist() == expected_ids  # refcocog-google left out
    assert set(train.column("dataset").to_pylist()) == {"mixup"}
    for split in ("val", "test"):
        table = read_manifest(data_dir, "mixup", split)
        assert table.column("id").to_pylist() == [f"refcocog-umd/{split}/{i}" for i in range(3)]
        assert set(table.column("split").to_pylist()) == {split}
    assert any("refcoco+" in note for note in report.notes)  # says what it left out


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "pipelines" / "prepare_data.py"), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_cli_exit_codes_and_output(images, tmp_path):
    rows = [REFCOCO_ROWS[0][0], BAD_ROWS[0][1]]
    splits_dir = write_splits(tmp_path / "splits", "refcoco", rows, splits=["train"])
    common = ["--dataset", "refcoco", "--splits-dir", str(splits_dir), "--images-dir", str(images),
              "--storage", str(tmp_path / "runs")]

    bad = _run_cli(*common)
    assert bad.returncode == 2, bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in bad.stderr
    assert "unc_train.pth: row 1: box outside image" in lines[0]

    ok = _run_cli(*common, "--skip-invalid", "--pack-images")
    assert ok.returncode == 0, ok.stderr
    assert "skipped 1 rows: box outside image" in ok.stdout
    manifest = manifest_path(tmp_path / "runs" / "data", "refcoco", "train")
    assert f"manifests: {manifest.parent}" in ok.stdout
    assert {"shard_file", "shard_row"} <= set(pq.read_schema(manifest).names)
