"""Trivial baselines on the synthetic benchmark, so a model's acc50 has a floor to beat.

  centre_box      the mean train box, in coordinates normalised by the image size, scaled
                  to each image (what a model that ignores the image and phrase learns)
  largest_object  the largest object in the image (a salience prior that ignores the phrase)
  random_object   an object of the image chosen at random (seeded): uses the objects but not
                  the phrase; its acc50 is about 1 / objects per image
Acc@0.5: IoU >= 0.5 between the ground truth and the baseline's box clamped to the image.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from hivg.data.manifest import read_manifest
from hivg.ops.boxes import clamp_to_image, elementwise_iou

BASELINES = ("centre_box", "largest_object", "random_object")


def _columns(table: pa.Table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    boxes = np.stack([table.column(c).to_numpy() for c in ("x1", "y1", "x2", "y2")], axis=1)
    sizes = np.stack([table.column("image_width").to_numpy(),
                      table.column("image_height").to_numpy()], axis=1).astype(np.float64)
    names = [Path(p).name for p in table.column("image_path").to_pylist()]
    return boxes, sizes, names


def acc50(pred: np.ndarray, gt: np.ndarray, sizes: np.ndarray) -> float:
    p = torch.as_tensor(pred, dtype=torch.float64)
    s = torch.as_tensor(sizes, dtype=torch.float64)
    p = clamp_to_image(p, s[:, 0], s[:, 1])
    iou = elementwise_iou(p, torch.as_tensor(gt, dtype=torch.float64))
    return float((iou >= 0.5).double().mean())


def mean_normalised_box(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return (boxes / np.concatenate([sizes, sizes], axis=1)).mean(axis=0)


def baseline_boxes(name: str, boxes: np.ndarray, sizes: np.ndarray, names: Sequence[str],
                   objects: dict, centre: np.ndarray, rng: random.Random) -> np.ndarray:
    if name == "centre_box":
        return centre[None, :] * np.concatenate([sizes, sizes], axis=1)
    picks = []
    for image in names:
        candidates = [o["box"] for o in objects[image]["objects"]]
        if name == "largest_object":
            picks.append(max(candidates, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])))
        else:
            picks.append(rng.choice(candidates))
    return np.asarray(picks, dtype=np.float64)


def compute_baselines(data_dir: str | Path, dataset: str, splits: Sequence[str], sidecar: dict,
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """{baseline: {split: acc50}} from the prepared manifests and the objects sidecar."""
    tables = {s: _columns(read_manifest(data_dir, dataset, s)) for s in splits}
    train_boxes, train_sizes, _ = tables["train"]
    centre = mean_normalised_box(train_boxes, train_sizes)
    result: dict[str, dict[str, float]] = {}
    for name in BASELINES:
        rng = random.Random(seed)
        result[name] = {}
        for split, (boxes, sizes, names) in tables.items():
            pred = baseline_boxes(name, boxes, sizes, names, sidecar["images"], centre, rng)
            result[name][split] = round(acc50(pred, boxes, sizes), 4)
    return result
