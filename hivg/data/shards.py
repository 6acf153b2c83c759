"""Packed image shards: image bytes in Parquet row groups, for sequential reads (local or S3).

Each split's images go to `{dataset_dir}/shards/{split}-NNNNN.parquet` (IMAGES_PER_SHARD
images per file, ROW_GROUP_IMAGES per row group, each image once however many expressions
share it), in order of first use in the manifest so an epoch over the manifest reads shards
front to back. Columns: image_path (provenance), image_bytes, width, height (of the stored
bytes). Images are stored byte-for-byte unless `max_side` asks for a pre-resize (long side
at most max_side, aspect kept, same format); the manifest keeps the ORIGINAL size and boxes,
and the reader maps the stored image onto the original's coordinates (see transforms.render).
"""
from __future__ import annotations

import bisect
import io
import os
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from hivg.data.manifest import filesystem, join

IMAGES_PER_SHARD = 2000
# Small row groups: a random-access read (shuffled training) fetches a few images, not MBs.
ROW_GROUP_IMAGES = 16

SHARD_SCHEMA = pa.schema([
    ("image_path", pa.string()),
    ("image_bytes", pa.binary()),
    ("width", pa.int32()),
    ("height", pa.int32()),
])


def encoded_image(path: str, max_side: Optional[int]) -> tuple[bytes, int, int]:
    """The file's bytes, re-encoded only when it must shrink to max_side."""
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        if max_side is None or max(w, h) <= max_side:
            return data, w, h
        fmt = im.format or "PNG"
        ratio = max_side / max(w, h)
        size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
        small = im.convert("RGB").resize(size, Image.BICUBIC)
    out = io.BytesIO()
    if fmt == "JPEG":
        small.save(out, format="JPEG", quality=95)
    else:
        small.save(out, format="PNG")
    return out.getvalue(), size[0], size[1]


def pack_split(table: pa.Table, dataset_folder: str | Path, split: str,
               max_side: Optional[int] = None,
               images_per_shard: int = IMAGES_PER_SHARD) -> pa.Table:
    """Write the split's images into shards; return the manifest with shard columns added."""
    folder = Path(dataset_folder)
    shard_dir = folder / "shards"
    for old in shard_dir.glob(f"{split}-*.parquet"):
        old.unlink()  # a re-pack must not leave stale shards behind
    paths = table.column("image_path").to_pylist()
    first_use = list(dict.fromkeys(paths))
    where: dict[str, tuple[str, int]] = {}
    for start in range(0, len(first_use), images_per_shard):
        chunk = first_use[start:start + images_per_shard]
        name = f"shards/{split}-{start // images_per_shard:05d}.parquet"
        encoded = [encoded_image(p, max_side) for p in chunk]
        shard = pa.table({"image_path": chunk,
                          "image_bytes": [e[0] for e in encoded],
                          "width": [e[1] for e in encoded],
                          "height": [e[2] for e in encoded]}, schema=SHARD_SCHEMA)
        _write_shard(shard, folder / name)
        where.update({p: (name, i) for i, p in enumerate(chunk)})
    table = _drop(table, ("shard_file", "shard_row"))
    table = table.append_column("shard_file", pa.array([where[p][0] for p in paths], pa.string()))
    return table.append_column("shard_row", pa.array([where[p][1] for p in paths], pa.int64()))


def _write_shard(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_IMAGES, compression="none")
    tmp.replace(path)


def _drop(table: pa.Table, names: tuple[str, ...]) -> pa.Table:
    return table.drop_columns([n for n in names if n in table.column_names])


class ShardReader:
    """Reads one image's bytes by (shard_file, shard_row); caches the last row group per file.

    Opened lazily and re-opened after a fork, so DataLoader workers each get their own
    file handles (an S3 filesystem must not cross a fork).
    """

    def __init__(self, dataset_folder: str | Path) -> None:
        self.dataset_folder = dataset_folder
        self._pid: Optional[int] = None

    def __getstate__(self) -> dict:  # open files never travel to another process
        return {"dataset_folder": self.dataset_folder, "_pid": None}

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._fs, _ = filesystem(self.dataset_folder)
        self._files: dict[str, pq.ParquetFile] = {}
        self._starts: dict[str, list[int]] = {}
        self._cached: dict[str, tuple[int, list]] = {}

    def _open(self, shard_file: str) -> pq.ParquetFile:
        if shard_file not in self._files:
            _, inner = filesystem(join(self.dataset_folder, *shard_file.split("/")))
            pf = pq.ParquetFile(self._fs.open_input_file(inner))
            starts, total = [], 0
            for g in range(pf.metadata.num_row_groups):
                starts.append(total)
                total += pf.metadata.row_group(g).num_rows
            self._files[shard_file], self._starts[shard_file] = pf, starts + [total]
        return self._files[shard_file]

    def read(self, shard_file: str, shard_row: int) -> bytes:
        if self._pid != os.getpid():
            self._reset()
        pf = self._open(shard_file)
        starts = self._starts[shard_file]
        group = bisect.bisect_right(starts, shard_row) - 1
        if not 0 <= group < len(starts) - 1:
            raise IndexError(f"{shard_file}: no row {shard_row} (the shard has {starts[-1]})")
        cached = self._cached.get(shard_file)
        if cached is None or cached[0] != group:
            column = pf.read_row_group(group, columns=["image_bytes"]).column(0).to_pylist()
            cached = self._cached[shard_file] = (group, column)
        return cached[1][shard_row - starts[group]]
