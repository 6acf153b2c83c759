"""The per-epoch metric stream (metrics.jsonl) and accuracy summaries.

Only validation metrics enter the stream: test splits are evaluated once at the end and go
to summary.json, never here (a searcher reads this stream).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np


class MetricsLog:
    """Append-only JSON lines, one object per (stage, epoch); resume-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def truncate_after(self, stage_index: int, epoch: int) -> None:
        """Drop records past (stage_index, epoch): the resumed run will log them again."""
        kept = [r for r in self.records()
                if (r["stage_index"], r["epoch"]) <= (stage_index, epoch)]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)


def accuracy_by_type(hits: np.ndarray, types: Iterable[str]) -> dict[str, float]:
    """acc50 per expression type (synthetic benchmark: attribute / relational / superlative)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for hit, t in zip(hits.tolist(), types):
        if t:
            groups[t].append(hit)
    return {t: float(np.mean(v)) for t, v in sorted(groups.items())}


def localisation(pred_boxes: np.ndarray, gt_boxes: np.ndarray) -> dict[str, float]:
    """Where misses come from, for (N, 4) xyxy predictions and targets. `located`: share of
    predictions whose centre lies inside the target's box (the right object was chosen);
    `acc50_if_located`: acc50 among those. A low first and a high second say choosing the
    object is the limit, not drawing its box."""
    import torch

    from hivg.ops.boxes import elementwise_iou

    pred, gt = np.asarray(pred_boxes, dtype=float), np.asarray(gt_boxes, dtype=float)
    cx, cy = (pred[:, 0] + pred[:, 2]) / 2, (pred[:, 1] + pred[:, 3]) / 2
    located = (cx >= gt[:, 0]) & (cx <= gt[:, 2]) & (cy >= gt[:, 1]) & (cy <= gt[:, 3])
    hits = (elementwise_iou(torch.from_numpy(pred), torch.from_numpy(gt)) >= 0.5).numpy()
    return {"located": float(located.mean()) if len(pred) else float("nan"),
            "acc50_if_located": float(hits[located].mean()) if located.any() else float("nan")}


def write_predictions(path: Path, result, rows: dict[str, list]) -> None:
    """predictions/SPLIT.parquet: one row per expression with its box, IoU and hit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pick = lambda col: [rows[col][i] for i in result.indices]  # noqa: E731
    pq.write_table(pa.table({
        "id": pick("id"),
        "x1": result.boxes[:, 0], "y1": result.boxes[:, 1],
        "x2": result.boxes[:, 2], "y2": result.boxes[:, 3],
        "iou": result.iou, "hit": result.hits,
        "expr_type": pick("expr_type"),
    }), path)
