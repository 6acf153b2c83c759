"""The grounding dataset: manifest rows -> canvas tensors, boxes and tokens.

Each item is a dict of tensors that torch's default collate batches:
  image      float32 (3, S, S)  ImageNet-normalised letterboxed image (padding = 0)
  pad_mask   bool (S, S)        True = padding
  box        float32 (4,)       target cx, cy, w, h normalised to [0, 1] of the canvas
  tokens     int64 (L,)         open_clip token ids of the phrase
  index      int64 ()           row in the manifest
  gt_box     float32 (4,)       x1, y1, x2, y2 pixels in the ORIGINAL image
  orig_size  float32 (2,)       (w, h) of the original image
  scale      float32 ()         canvas = orig * scale + offset (the augmented mapping at
  offset     float32 (2,)       train time); transforms.canvas_to_image_boxes inverts it
Images are read from loose files or, when the manifest has shard columns, from shards.
Augmentation draws from Python's `random` module unless an rng is given: DataLoader seeds
it per worker, the trainer seeds it in the main process.
"""
from __future__ import annotations

import io
import math
import random
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import Dataset

from hivg.config import DataConfig
from hivg.data.manifest import dataset_dir, has_shards, read_manifest, resolve_image_path
from hivg.data.shards import ShardReader
from hivg.data.tokens import tokenize
from hivg.data.transforms import LetterboxTransform
from hivg.errors import DataError


class GroundingDataset(Dataset):
    def __init__(self, table: pa.Table, dataset_folder: str | Path, context_length: int,
                 transform: LetterboxTransform,
                 image_source: Literal["auto", "files", "shards"] = "auto",
                 rng: Optional[random.Random] = None) -> None:
        if image_source == "shards" and not has_shards(table):
            raise DataError(f"{dataset_folder}: the manifest has no image shards "
                            "(prepare with --pack-images)")
        self.use_shards = image_source == "shards" or (image_source == "auto" and has_shards(table))
        self.transform, self.context_length, self.rng = transform, context_length, rng
        # Plain columns: compact, cheap to pickle into DataLoader workers.
        self.image_paths: list[str] = [resolve_image_path(dataset_folder, path) for path
                                       in table.column("image_path").to_pylist()]
        self.sizes = np.stack([table.column("image_width").to_numpy(),
                               table.column("image_height").to_numpy()], 1).astype(np.int64)
        self.boxes = np.stack([table.column(c).to_numpy() for c in ("x1", "y1", "x2", "y2")], 1)
        self.rows: dict[str, list[str]] = {
            "id": table.column("id").to_pylist(),
            "phrase": table.column("phrase").to_pylist(),
            "expr_type": table.column("expr_type").to_pylist(),
        }
        if self.use_shards:
            self.shard_files: list[str] = table.column("shard_file").to_pylist()
            self.shard_rows = table.column("shard_row").to_numpy()
            self.shards = ShardReader(dataset_folder)

    def __len__(self) -> int:
        return len(self.image_paths)

    def _open_image(self, index: int) -> Image.Image:
        if self.use_shards:
            data = self.shards.read(self.shard_files[index], int(self.shard_rows[index]))
            return Image.open(io.BytesIO(data))
        return Image.open(self.image_paths[index])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng or random
        w, h = (int(v) for v in self.sizes[index])
        box = [float(v) for v in self.boxes[index]]
        phrase = self.rows["phrase"][index]
        placement = self.transform.placement((w, h), box, phrase, rng)
        image = self._open_image(index)
        if image.format == "JPEG":  # decode at the resolution the canvas needs, not more
            image.draft("RGB", (math.ceil(w * placement.scale), math.ceil(h * placement.scale)))
        sample = self.transform.apply(image, (w, h), box, placement, rng)
        sample["tokens"] = tokenize(phrase, self.context_length)[0]
        sample["index"] = torch.tensor(index, dtype=torch.int64)
        sample["gt_box"] = torch.tensor(box, dtype=torch.float32)
        sample["orig_size"] = torch.tensor([w, h], dtype=torch.float32)
        return sample


def build_dataset(data_config: DataConfig, split: str, image_size: int, context_length: int,
                  train: bool) -> GroundingDataset:
    """The split's dataset; augmentation when `train` and data.augment; the first
    max_train_samples (train) or max_eval_samples rows when those are set."""
    if data_config.data_dir is None:
        raise DataError("data.data_dir: no folder of prepared datasets given")
    table = read_manifest(data_config.data_dir, data_config.dataset, split)
    limit = data_config.max_train_samples if train else data_config.max_eval_samples
    if limit is not None:
        table = table.slice(0, limit)
    transform = LetterboxTransform(image_size, train=train and data_config.augment)
    return GroundingDataset(table, dataset_dir(data_config.data_dir, data_config.dataset),
                            context_length, transform)
