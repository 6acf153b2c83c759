"""Parquet manifests: one row per referring expression.

Layout: `{data_dir}/{dataset}/{split}.parquet` where `data_dir` is `{storage}/data`.
Columns (BASE_SCHEMA): id, dataset, split, image_path (absolute; relative to the manifest's
folder for images inside it, e.g. the synthetic renders), image_width and
image_height (the ORIGINAL image size, also when shards hold pre-resized images),
x1, y1, x2, y2 (box in pixels of the original image), phrase (normalised), expr_type
("" for real data; attribute | relational | superlative on the synthetic benchmark).
With packed images two more columns say where each row's image bytes live:
shard_file (path relative to the manifest's folder) and shard_row (row in that file).

Paths may be local folders or URIs (`s3://bucket/prefix/data`): reading goes through a
pyarrow filesystem. Writing is local (atomic rename), which is where preparation runs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hivg.data.records import Record
from hivg.data.splits import split_sort_key
from hivg.errors import DataError

BASE_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("dataset", pa.string()),
    ("split", pa.string()),
    ("image_path", pa.string()),
    ("image_width", pa.int32()),
    ("image_height", pa.int32()),
    ("x1", pa.float64()),
    ("y1", pa.float64()),
    ("x2", pa.float64()),
    ("y2", pa.float64()),
    ("phrase", pa.string()),
    ("expr_type", pa.string()),
])
SHARD_COLUMNS = [("shard_file", pa.string()), ("shard_row", pa.int64())]


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def join(base: str | Path, *parts: str) -> str | Path:
    """Join path parts; URIs stay strings, local paths become Paths."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return Path(base).joinpath(*parts)


def filesystem(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it (local folders and s3:// URIs alike)."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), os.path.abspath(path)


def dataset_dir(data_dir: str | Path, dataset: str) -> str | Path:
    return join(data_dir, dataset)


def manifest_path(data_dir: str | Path, dataset: str, split: str) -> str | Path:
    return join(data_dir, dataset, f"{split}.parquet")


def records_to_table(records: Sequence[Record]) -> pa.Table:
    columns = {
        "id": [r.id for r in records],
        "dataset": [r.dataset for r in records],
        "split": [r.split for r in records],
        "image_path": [r.image_path for r in records],
        "image_width": [r.image_width for r in records],
        "image_height": [r.image_height for r in records],
        "x1": [r.box[0] for r in records],
        "y1": [r.box[1] for r in records],
        "x2": [r.box[2] for r in records],
        "y2": [r.box[3] for r in records],
        "phrase": [r.phrase for r in records],
        "expr_type": [r.expr_type for r in records],
    }
    return pa.table(columns, schema=BASE_SCHEMA)


def relative_image_paths(table: pa.Table, dataset_folder: str | Path) -> pa.Table:
    """The manifest with image paths inside `dataset_folder` made relative to it, so a storage
    folder that is moved or copied (to another node, back from S3) still finds its own images;
    paths elsewhere (a dataset's external image folder) stay absolute."""
    folder = str(Path(dataset_folder).resolve()) + os.sep  # as records resolve theirs
    paths = [os.path.relpath(p, folder) if p.startswith(folder) else p
             for p in table.column("image_path").to_pylist()]
    i = table.column_names.index("image_path")
    return table.set_column(i, "image_path", pa.array(paths, pa.string()))


def resolve_image_path(dataset_folder: str | Path, path: str) -> str:
    """An image_path of a manifest read from `dataset_folder`, made absolute."""
    return path if os.path.isabs(path) else os.path.join(dataset_folder, path)


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write a Parquet file atomically (readers never see a half-written manifest)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def read_manifest(data_dir: str | Path, dataset: str, split: str,
                  columns: Sequence[str] | None = None) -> pa.Table:
    """The manifest of one split; DataError naming the file when it is not there."""
    path = manifest_path(data_dir, dataset, split)
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        raise DataError(f"{path}: no manifest for {dataset}/{split} (prepare it with "
                        f"python pipelines/prepare_data.py --dataset {dataset})")
    table = pq.read_table(inner, filesystem=fs, columns=list(columns) if columns else None)
    missing = [n for n in (columns or BASE_SCHEMA.names) if n not in table.column_names]
    if missing:
        raise DataError(f"{path}: not a manifest (missing columns {', '.join(missing)})")
    return table


def has_shards(table: pa.Table) -> bool:
    return all(name in table.column_names for name, _ in SHARD_COLUMNS)


def list_splits(data_dir: str | Path, dataset: str) -> list[str]:
    """Prepared splits of a dataset (train, val, test, testA, testB first); [] if none."""
    fs, inner = filesystem(dataset_dir(data_dir, dataset))
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
    splits = [Path(i.path).stem for i in infos
              if i.type == pafs.FileType.File and i.path.endswith(".parquet")
              and not Path(i.path).name.startswith(".")]
    return sorted(splits, key=split_sort_key)
