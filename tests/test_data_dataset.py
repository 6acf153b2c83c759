"""GroundingDataset on the synthetic benchmark: the batch contract, loose files vs shards."""
from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from hivg.config import DataConfig
from hivg.data.dataset import GroundingDataset, build_dataset
from hivg.data.manifest import read_manifest
from hivg.data.prepare import prepare_synthetic
from hivg.data.synthetic import COLOURS
from hivg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, LetterboxTransform, canvas_to_image_boxes
from hivg.errors import DataError

SIZE, CONTEXT = 96, 16


def data_config(storage, **kw) -> DataConfig:
    return DataConfig(dataset="synthetic", data_dir=str(storage / "data"), **kw)


def datasets_by_source(storage, split="val", train=False, max_side=None):
    table = read_manifest(storage / "data", "synthetic", split)
    folder = storage / "data" / "synthetic"
    make = lambda source: GroundingDataset(  # noqa: E731
        table, folder, CONTEXT, LetterboxTransform(SIZE, train=train), image_source=source)
    return make("files"), make("shards")


def test_items_follow_the_batch_contract(synthetic_storage):
    dataset = build_dataset(data_config(synthetic_storage), "val", SIZE, CONTEXT, train=False)
    table = read_manifest(synthetic_storage / "data", "synthetic", "val").to_pylist()
    assert len(dataset) == len(table)
    assert dataset.rows["id"] == [r["id"] for r in table]
    assert dataset.rows["expr_type"] == [r["expr_type"] for r in table]
    assert dataset.rows["phrase"] == [r["phrase"] for r in table]
    expected = {
        "image": (torch.float32, (3, SIZE, SIZE)), "pad_mask": (torch.bool, (SIZE, SIZE)),
        "box": (torch.float32, (4,)), "tokens": (torch.int64, (CONTEXT,)),
        "index": (torch.int64, ()), "gt_box": (torch.float32, (4,)),
        "orig_size": (torch.float32, (2,)), "scale": (torch.float32, ()),
        "offset": (torch.float32, (2,)),
    }
    for i in (0, len(dataset) - 1):
        item = dataset[i]
        assert {k: (v.dtype, tuple(v.shape)) for k, v in item.items()} == expected
        row = table[i]
        assert item["index"].item() == i
        assert item["gt_box"].tolist() == [row["x1"], row["y1"], row["x2"], row["y2"]]
        assert item["orig_size"].tolist() == [row["image_width"], row["image_height"]]
        assert torch.all((item["box"] >= 0) & (item["box"] <= 1))
    batch = default_collate([dataset[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["scale"].shape == (4,)
    back = canvas_to_image_boxes(batch["box"], batch["scale"], batch["offset"], batch["orig_size"], SIZE)
    assert torch.allclose(back, batch["gt_box"], atol=1e-3)


def test_the_box_lands_on_the_target_object(synthetic_storage):
    """End to end: the canvas pixel at the box centre has the target's colour."""
    sidecar = json.loads((synthetic_storage / "data/synthetic/raw/objects.json").read_text())
    dataset = build_dataset(data_config(synthetic_storage), "val", SIZE, CONTEXT, train=False)
    mean, std = np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255
    for i in range(len(dataset)):
        item = dataset[i]
        expr = sidecar["expressions"]["val"][int(dataset.rows["id"][i].rsplit("/", 1)[1])]
        target = sidecar["images"][expr["image"]]["objects"][expr["target"]]
        cx, cy = (item["box"][:2] * SIZE).long().tolist()
        pixel = item["image"][:, cy, cx].numpy() * std + mean
        assert pixel == pytest.approx(COLOURS[target["colour"]], abs=45), (i, target)


def test_caps_take_the_first_rows(synthetic_storage):
    config = data_config(synthetic_storage, max_train_samples=7, max_eval_samples=5)
    train = build_dataset(config, "train", SIZE, CONTEXT, train=True)
    val = build_dataset(config, "val", SIZE, CONTEXT, train=False)
    assert train.rows["id"] == [f"synthetic/train/{i}" for i in range(7)]
    assert val.rows["id"] == [f"synthetic/val/{i}" for i in range(5)]


def test_augmentation_only_when_training_and_enabled(synthetic_storage):
    config = data_config(synthetic_storage)
    eval_item = build_dataset(config, "train", SIZE, CONTEXT, train=False)[3]
    plain = build_dataset(data_config(synthetic_storage, augment=False), "train", SIZE, CONTEXT, train=True)
    assert all(torch.equal(v, plain[3][k]) for k, v in eval_item.items())
    augmented = build_dataset(config, "train", SIZE, CONTEXT, train=True)
    random.seed(0)
    draws = [augmented[3] for _ in range(5)]
    assert len({(d["scale"].item(), *d["offset"].tolist()) for d in draws}) > 1
    for d in draws:  # the augmented mapping still inverts to the ground truth
        back = canvas_to_image_boxes(d["box"][None], d["scale"][None], d["offset"][None],
                                     d["orig_size"][None], SIZE)[0]
        assert torch.allclose(back, d["gt_box"], atol=1e-3)


@pytest.mark.parametrize("split,train", [("val", False), ("train", True)])
def test_shards_and_loose_files_give_identical_samples(synthetic_storage, split, train):
    files, shards = datasets_by_source(synthetic_storage, split, train)
    assert shards.use_shards and not files.use_shards
    for i in range(len(files)):
        files.rng, shards.rng = random.Random(i), random.Random(i)
        a, b = files[i], shards[i]
        for key in a:
            assert torch.equal(a[key], b[key]), (i, key)


def test_pre_resized_shards_keep_original_geometry(tmp_path):
    prepare_synthetic(tmp_path, seed=5, sizes={"train": 8, "val": 6}, pack_images=True,
                      pack_max_side=64)
    table = read_manifest(tmp_path / "data", "synthetic", "val")
    assert min(table.column("image_width").to_pylist()) >= 128  # original sizes in the manifest
    files, shards = datasets_by_source(tmp_path, "val")
    for i in range(len(files)):
        a, b = files[i], shards[i]
        for key in ("box", "pad_mask", "scale", "offset", "gt_box", "orig_size", "tokens"):
            assert torch.equal(a[key], b[key]), key
        assert (a["image"] - b["image"]).abs().mean() < 0.3  # resampled, not identical


def test_shards_read_in_dataloader_workers(synthetic_storage):
    dataset = build_dataset(data_config(synthetic_storage), "test", SIZE, CONTEXT, train=False)
    assert dataset.use_shards
    first = dataset[0]  # opens shard files in this process; a copy must not carry them
    copy = pickle.loads(pickle.dumps(dataset))
    assert all(torch.equal(v, copy[0][k]) for k, v in first.items())
    loader = DataLoader(dataset, batch_size=8, num_workers=1)
    indices = torch.cat([batch["index"] for batch in loader])
    assert indices.tolist() == list(range(len(dataset)))


def test_missing_manifest_is_a_user_error(synthetic_storage, tmp_path):
    with pytest.raises(DataError, match="prepare_data.py --dataset synthetic"):
        build_dataset(data_config(tmp_path), "train", SIZE, CONTEXT, train=True)
    with pytest.raises(DataError, match="no manifest for synthetic/testA"):
        build_dataset(data_config(synthetic_storage), "testA", SIZE, CONTEXT, train=False)



def test_a_moved_storage_still_finds_its_synthetic_images(tmp_path):
    """Images inside the dataset folder are named relative to it: a storage copied to another
    place (another node's mount, back from S3) reads the same samples, loose files included."""
    from hivg.train.stage_cache import data_fingerprint

    first = tmp_path / "first"
    prepare_synthetic(first, seed=5, sizes={"train": 6, "val": 4})
    paths = read_manifest(first / "data", "synthetic", "val").column("image_path").to_pylist()
    assert all(not p.startswith("/") and p.startswith("raw/") for p in paths)
    loose = lambda storage: GroundingDataset(  # noqa: E731
        read_manifest(storage / "data", "synthetic", "val"), storage / "data" / "synthetic",
        CONTEXT, LetterboxTransform(SIZE, train=False), image_source="files")
    before = loose(first)[0]
    fingerprint = data_fingerprint(first / "data", "synthetic")
    moved = tmp_path / "moved"
    first.rename(moved)
    after = loose(moved)[0]
    for key in ("image", "box", "tokens"):
        assert torch.equal(before[key], after[key]), key
    assert data_fingerprint(moved / "data", "synthetic") == fingerprint  # the cache still hits
