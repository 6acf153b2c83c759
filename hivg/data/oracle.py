"""Per-patch ground truth of the synthetic benchmark, for probes that tell perception from
reasoning (`pipelines/probe_perception.py`).

For every expression of a split: what lies under each cell of a model's patch grid on the
evaluation canvas (the letterboxed image), read from the generator's objects sidecar rather
than from pixels. A cell belongs to an object when the cell's centre falls inside the
object's box, and the cell under the object's centre always does (small objects may cover no
cell centre at all).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch

from hivg.data import synthetic
from hivg.data.transforms import eval_placement
from hivg.errors import DataError

ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "colour": tuple(sorted(synthetic.COLOURS)),
    "shape": tuple(synthetic.SHAPES),
    "size": tuple(sorted(synthetic.SIZE_RANGES)),
}
# Feature layout of a cell: one-hot colour, shape and size, an "object here" flag, and the
# object's canvas box (x1, y1, x2, y2) / canvas size. Empty cells are all zeros.
_SLICES: dict[str, slice] = {}
_offset = 0
for _name, _values in ATTRIBUTE_VALUES.items():
    _SLICES[_name] = slice(_offset, _offset + len(_values))
    _offset += len(_values)
OBJECT_FLAG = _offset
BOX = slice(_offset + 1, _offset + 5)
FEATURES = _offset + 5


def attribute_slice(name: str) -> slice:
    return _SLICES[name]


@dataclass
class CellTruth:
    features: torch.Tensor     # (N, G*G, FEATURES) what lies under each cell
    owned: torch.Tensor        # (N, G*G) bool: the cell belongs to the expression's target
    target_cell: torch.Tensor  # (N,) long: the cell under the target's centre
    types: list[str]           # expression type per row

    def has_object(self) -> torch.Tensor:
        return self.features[..., OBJECT_FLAG] > 0


def canvas_box(box, placement, image_size: int) -> tuple[float, float, float, float]:
    """An object's box (xyxy, original pixels) on the letterboxed canvas, normalised to [0, 1]."""
    (dx, dy), scale = placement.offset, placement.scale
    x1, y1, x2, y2 = box
    return ((x1 * scale + dx) / image_size, (y1 * scale + dy) / image_size,
            (x2 * scale + dx) / image_size, (y2 * scale + dy) / image_size)


def object_cells(box: tuple[float, float, float, float], grid: int) -> tuple[set[int], int]:
    """The cells of a canvas-normalised box (xyxy in [0, 1]) and the cell under its centre."""
    x1, y1, x2, y2 = box
    cells = {gy * grid + gx for gy in range(grid) for gx in range(grid)
             if x1 <= (gx + 0.5) / grid <= x2 and y1 <= (gy + 0.5) / grid <= y2}
    cx = min(grid - 1, max(0, int((x1 + x2) / 2 * grid)))
    cy = min(grid - 1, max(0, int((y1 + y2) / 2 * grid)))
    centre = cy * grid + cx
    return cells | {centre}, centre


def cell_truth(dataset_folder: str | Path, split: str, image_size: int, grid: int) -> CellTruth:
    """The split's per-cell truth, row-aligned with its manifest (`{split}.parquet`)."""
    folder = Path(dataset_folder)
    sidecar = synthetic.load_sidecar(folder / "raw")
    rows = pq.read_table(folder / f"{split}.parquet",
                         columns=["x1", "y1", "x2", "y2", "expr_type"]).to_pylist()
    expressions = sidecar["expressions"].get(split, [])
    if len(expressions) != len(rows):
        raise DataError(f"{folder / 'raw' / 'objects.json'}: {len(expressions)} {split} "
                        f"expressions, the manifest has {len(rows)} rows")
    features = torch.zeros(len(rows), grid * grid, FEATURES)
    owned = torch.zeros(len(rows), grid * grid, dtype=torch.bool)
    target_cell = torch.zeros(len(rows), dtype=torch.long)
    for i, (row, expr) in enumerate(zip(rows, expressions)):
        image = sidecar["images"][expr["image"]]
        placement = eval_placement(image["width"], image["height"], image_size)
        for k, obj in enumerate(image["objects"]):
            box = canvas_box(obj["box"], placement, image_size)
            cells, centre = object_cells(box, grid)
            feature = torch.zeros(FEATURES)
            for name, values in ATTRIBUTE_VALUES.items():
                feature[_SLICES[name].start + values.index(obj[name])] = 1.0
            feature[OBJECT_FLAG] = 1.0
            feature[BOX] = torch.tensor(box)
            features[i, sorted(cells)] = feature
            if k == expr["target"]:
                if list(obj["box"]) != [row["x1"], row["y1"], row["x2"], row["y2"]]:
                    raise DataError(f"{folder / f'{split}.parquet'}: row {i} is not aligned "
                                    "with the objects sidecar (its box differs from the target's)")
                owned[i, sorted(cells)] = True
                target_cell[i] = centre
    return CellTruth(features, owned, target_cell, [r["expr_type"] for r in rows])
