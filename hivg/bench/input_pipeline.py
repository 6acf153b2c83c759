"""Input-pipeline rows of `benchmark.py --training-step`: decode + letterbox + training
augmentations + tokenize, per DataLoader worker, loose JPEG files against packed shards."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hivg.bench.inference import jpeg_640x480
from hivg.bench.timing import PHRASE


def input_pipeline_rows(config, images: int, passes: int = 2) -> list[dict[str, Any]]:
    """Decode + letterbox + training augmentations + tokenize, per loader worker: a small
    RefCOCO-format dataset of 640x480 JPEGs, prepared twice (loose files; packed shards),
    read through a DataLoader with one worker process, batch 32. Worker start-up and the
    first batch are not timed."""
    from torch.utils.data import DataLoader

    from hivg.config import DataConfig
    from hivg.data.dataset import build_dataset
    from hivg.data.prepare import prepare_dataset
    from hivg.data.splits import get_spec

    size, ctx = config.model.image_size, config.model.context_length
    rows = []
    with tempfile.TemporaryDirectory(prefix="hivg-input-bench-") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "splits").mkdir()
        records = []
        for i in range(images):
            name = f"{i:05d}.jpg"
            (root / "images" / name).write_bytes(jpeg_640x480(i))
            x, y = 40 + (i * 37) % 400, 40 + (i * 53) % 300
            records.append((name, {"height": 480, "width": 640}, [x, y, 120.0, 90.0],
                            PHRASE, []))
        torch.save(records, get_spec("refcoco").split_file(root / "splits", "train"))
        for layout, pack in (("loose JPEG files", False), ("packed shards", True)):
            storage = root / ("packed" if pack else "loose")
            prepare_dataset("refcoco", root / "splits", root / "images", storage,
                            pack_images=pack)
            ds = build_dataset(DataConfig(dataset="refcoco", data_dir=str(storage / "data")),
                               "train", size, ctx, train=True)
            loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=1,
                                persistent_workers=True, drop_last=False)
            iterator = iter(loader)
            next(iterator)  # worker start-up and the first batch
            t0, count = time.perf_counter(), 0
            for _ in range(passes):
                for b in iterator:
                    count += len(b["image"])
                iterator = iter(loader)
            seconds = time.perf_counter() - t0
            rows.append({"layout": layout, "images": count, "seconds": seconds,
                         "images_per_s_per_worker": count / seconds})
            del iterator, loader
    return rows
