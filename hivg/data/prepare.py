"""Turn split files into manifests: published datasets, mixup, the synthetic benchmark.

Every dataset goes through the same path: split files -> `read_split_file` (validation) ->
Parquet manifests under `{storage}/data/{dataset}/` (+ optional image shards). All splits
are validated before anything is written, so a strict run that fails leaves no partial
dataset behind. Preparation writes to a local folder (copy it to S3 afterwards).
"""
from __future__ import annotations

import fcntl
import json
import shutil
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

import pyarrow as pa

from hivg.data import synthetic
from hivg.data.baselines import compute_baselines
from hivg.data.manifest import (BASE_SCHEMA, is_uri, list_splits, manifest_path,
                                read_manifest, records_to_table, relative_image_paths,
                                write_table)
from hivg.data.records import ImageProbe, Record, read_split_file
from hivg.data.shards import pack_split
from hivg.data.splits import (MIXUP_EVAL_SOURCE, MIXUP_TRAIN_SOURCES, get_spec)
from hivg.errors import DataError, UserError


@dataclass
class SplitSummary:
    split: str
    rows: int
    images: int
    rows_in_file: int
    skipped: dict[str, int] = field(default_factory=dict)
    expr_types: dict[str, int] = field(default_factory=dict)


@dataclass
class PrepareReport:
    dataset: str
    dataset_dir: Path
    splits: list[SplitSummary]
    missing: list[str] = field(default_factory=list)   # split files that were not there
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{'split':<8} {'rows':>8} {'images':>8} {'skipped':>8}"]
        for s in self.splits:
            lines.append(f"{s.split:<8} {s.rows:>8} {s.images:>8} {sum(s.skipped.values()):>8}")
            if s.expr_types:
                lines.append("    types: " + ", ".join(
                    f"{t} {n} ({n / max(s.rows, 1):.0%})" for t, n in sorted(s.expr_types.items())))
            for reason, count in sorted(s.skipped.items()):
                lines.append(f"    skipped {count} rows: {reason}")
        for split in self.missing:
            lines.append(f"{split:<8} {'(no split file)':>26}")
        lines += self.notes
        lines.append(f"manifests: {self.dataset_dir}/{{split}}.parquet")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "dataset_dir": str(self.dataset_dir),
                "splits": [vars(s) for s in self.splits], "missing": self.missing,
                "notes": self.notes}


def _local_data_dir(storage: str | Path) -> Path:
    if is_uri(storage):
        raise UserError(f"--storage {storage}: preparation writes to a local folder; "
                        "copy its data/ folder to S3 afterwards")
    return Path(storage).resolve() / "data"


def _summary(split: str, table: pa.Table, rows_in_file: int, skipped: Counter) -> SplitSummary:
    types = Counter(t for t in table.column("expr_type").to_pylist() if t)
    return SplitSummary(split, table.num_rows, len(set(table.column("image_path").to_pylist())),
                        rows_in_file, dict(skipped), dict(types))


def _write_splits(dataset: str, data_dir: Path, tables: dict[str, pa.Table],
                  pack_images: bool, pack_max_side: Optional[int]) -> None:
    folder = data_dir / dataset
    for split, table in tables.items():
        if pack_images:
            table = pack_split(table, folder, split, pack_max_side)
        write_table(relative_image_paths(table, folder), manifest_path(data_dir, dataset, split))


def _finish(report: PrepareReport) -> PrepareReport:
    (report.dataset_dir / "prepare.json").write_text(json.dumps(report.to_dict(), indent=1))
    return report


def prepare_dataset(dataset: str, splits_dir: str | Path,
                    images_dir: str | Path | Mapping[str, str | Path], storage: str | Path, *,
                    skip_invalid: bool = False, pack_images: bool = False,
                    pack_max_side: Optional[int] = None) -> PrepareReport:
    """Manifests for a published dataset (mixup too, from its published split files).

    images_dir: the dataset's image folder; for mixup a mapping {coco, referit, flickr} ->
    folder, since its rows come from three image collections.
    """
    spec = get_spec(dataset)
    if dataset == "synthetic":
        raise UserError("the synthetic benchmark is generated: run --dataset synthetic "
                        "without --splits-dir/--images-dir")
    splits_dir = Path(splits_dir)
    if not splits_dir.is_dir():
        raise DataError(f"--splits-dir {splits_dir}: not a folder")
    images = _check_images_dir(dataset, images_dir)
    data_dir = _local_data_dir(storage)
    probe = ImageProbe()
    tables: dict[str, pa.Table] = {}
    summaries, missing = [], []
    for split in spec.splits:
        path = spec.split_file(splits_dir, split)
        if not path.is_file():
            missing.append(split)
            continue
        read = read_split_file(spec, split, path, images, skip_invalid=skip_invalid, probe=probe)
        tables[split] = records_to_table(read.records)
        summaries.append(_summary(split, tables[split], read.rows_in_file, read.skipped))
    if not tables:
        expected = ", ".join(spec.split_file(splits_dir, s).name for s in spec.splits)
        raise DataError(f"--splits-dir {splits_dir}: no {dataset} split files (expected {expected})")
    _write_splits(dataset, data_dir, tables, pack_images, pack_max_side)
    return _finish(PrepareReport(dataset, data_dir / dataset, summaries, missing))


def _check_images_dir(dataset: str, images_dir) -> Path | dict[str, Path]:
    if dataset == "mixup":
        if not isinstance(images_dir, Mapping):
            raise UserError("mixup rows come from three image collections: give "
                            "--images-dir coco=DIR referit=DIR flickr=DIR")
        folders = {k: Path(v) for k, v in images_dir.items()}
    else:
        if isinstance(images_dir, Mapping):
            raise UserError(f"{dataset}: give one --images-dir folder (SOURCE=DIR is for mixup)")
        folders = {"": Path(images_dir)}
    for name, folder in folders.items():
        if not folder.is_dir():
            raise DataError(f"--images-dir {(name + '=') if name else ''}{folder}: not a folder")
    return folders if dataset == "mixup" else folders[""]


def prepare_mixup_union(storage: str | Path, *, pack_images: bool = False,
                        pack_max_side: Optional[int] = None) -> PrepareReport:
    """Mixup without a published file: the prepared train sets of the five datasets (never
    RefCOCOg-google, whose train images overlap RefCOCOg-umd's val/test), with val/test taken
    from RefCOCOg-umd. Rows keep their source ids (e.g. refcoco/train/17)."""
    data_dir = _local_data_dir(storage)
    sources = [d for d in MIXUP_TRAIN_SOURCES if "train" in list_splits(data_dir, d)]
    if not sources:
        raise DataError(f"{data_dir}: no prepared train sets to build mixup from (prepare "
                        f"{', '.join(MIXUP_TRAIN_SOURCES)} first, or give mixup split files)")
    eval_splits = [s for s in ("val", "test") if s in list_splits(data_dir, MIXUP_EVAL_SOURCE)]
    if eval_splits != ["val", "test"]:
        raise DataError(f"{data_dir}: mixup takes val/test from {MIXUP_EVAL_SOURCE}; prepare "
                        f"{MIXUP_EVAL_SOURCE} first")
    parts = {"train": [(d, "train") for d in sources],
             **{s: [(MIXUP_EVAL_SOURCE, s)] for s in eval_splits}}
    tables, summaries = {}, []
    for split, sources_of_split in parts.items():
        pieces = [read_manifest(data_dir, d, s).select(BASE_SCHEMA.names) for d, s in sources_of_split]
        table = pa.concat_tables(pieces)
        table = table.set_column(table.schema.get_field_index("dataset"), "dataset",
                                 pa.array(["mixup"] * table.num_rows, pa.string()))
        table = table.set_column(table.schema.get_field_index("split"), "split",
                                 pa.array([split] * table.num_rows, pa.string()))
        tables[split] = table
        summaries.append(_summary(split, table, table.num_rows, Counter()))
    _write_splits("mixup", data_dir, tables, pack_images, pack_max_side)
    missing = [d for d in MIXUP_TRAIN_SOURCES if d not in sources]
    notes = [f"train = union of {', '.join(sources)}; val/test from {MIXUP_EVAL_SOURCE}"]
    if missing:
        notes.append(f"not prepared, left out of train: {', '.join(missing)}")
    return _finish(PrepareReport("mixup", data_dir / "mixup", summaries, notes=notes))


# ----------------------------------------------------------------------------- synthetic


def _synthetic_info(seed: int, sizes: dict[str, int]) -> dict:
    return {"generator_version": synthetic.GENERATOR_VERSION, "seed": seed, "sizes": sizes}


def prepare_synthetic(storage: str | Path, seed: int = 0, sizes: dict[str, int] | None = None,
                      *, pack_images: bool = False,
                      pack_max_side: Optional[int] = None) -> PrepareReport:
    """Generate the benchmark's split files, convert them like real data, add baselines."""
    sizes = dict(synthetic.DEFAULT_SIZES if sizes is None else sizes)
    if "train" not in sizes:
        raise UserError("the synthetic benchmark needs a train split (baselines use it)")
    data_dir = _local_data_dir(storage)
    folder = data_dir / "synthetic"
    if folder.exists():  # ours to replace: stale images or splits must not survive
        shutil.rmtree(folder)
    raw = synthetic.generate(folder / "raw", seed, sizes)
    sidecar = synthetic.load_sidecar(raw)
    spec = get_spec("synthetic")
    tables, summaries = {}, []
    for split in sizes:
        read = read_split_file(spec, split, spec.split_file(raw / "splits", split), raw / "images")
        records = _with_expr_types(read.records, sidecar["expressions"][split])
        tables[split] = records_to_table(records)
        summaries.append(_summary(split, tables[split], read.rows_in_file, read.skipped))
    _write_splits("synthetic", data_dir, tables, pack_images, pack_max_side)
    baselines = compute_baselines(data_dir, "synthetic", list(sizes), sidecar, seed)
    (folder / "baselines.json").write_text(json.dumps(baselines, indent=1))
    notes = ["baselines (acc50): " + "; ".join(
        f"{name} " + ", ".join(f"{s} {v:.3f}" for s, v in per.items())
        for name, per in baselines.items())]
    report = _finish(PrepareReport("synthetic", folder, summaries, notes=notes))
    # Written last: its presence means the benchmark is complete (see ensure_synthetic).
    (folder / "info.json").write_text(json.dumps(_synthetic_info(seed, sizes)))
    return report


def _with_expr_types(records: list[Record], expressions: list[dict]) -> list[Record]:
    """Attach each row's type from the sidecar (row-aligned; ids end in the row index)."""
    out = []
    for r in records:
        row = int(r.id.rsplit("/", 1)[1])
        out.append(Record(**{**vars(r), "expr_type": expressions[row]["expr_type"]}))
    return out


def synthetic_ready(storage: str | Path, seed: int = 0,
                    sizes: dict[str, int] | None = None) -> bool:
    sizes = dict(synthetic.DEFAULT_SIZES if sizes is None else sizes)
    folder = _local_data_dir(storage) / "synthetic"
    try:
        info = json.loads((folder / "info.json").read_text())
    except (OSError, ValueError):
        return False
    return (info == _synthetic_info(seed, sizes) and (folder / "baselines.json").is_file()
            and all((folder / f"{s}.parquet").is_file() for s in sizes))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock, so concurrent trials do not generate the benchmark twice at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_synthetic(storage: str | Path, seed: int = 0, sizes: dict[str, int] | None = None,
                     log: Callable[[str], None] | None = None) -> Path:
    """Prepare the synthetic benchmark unless it is already there with this seed and sizes;
    return its folder ({storage}/data/synthetic)."""
    log = log or (lambda _msg: None)
    data_dir = _local_data_dir(storage)
    with _locked(data_dir / ".synthetic.lock"):
        if synthetic_ready(storage, seed, sizes):
            log(f"synthetic benchmark: {data_dir / 'synthetic'} (ready)")
        else:
            log(f"synthetic benchmark: generating in {data_dir / 'synthetic'} (seed {seed})")
            log(prepare_synthetic(storage, seed, sizes).format())
    return data_dir / "synthetic"


# ----------------------------------------------------------------------------- the authors' layout


def prepare_authors_layout(datasets: list[str], image_root: str | Path,
                           split_root: str | Path | None = None, storage: str | Path = "runs",
                           *, skip_invalid: bool = False, pack_images: bool = False,
                           pack_max_side: Optional[int] = None) -> list[PrepareReport]:
    """Several datasets (`all`: the five) from the authors' tree (hivg.data.authors_layout):
    every folder they need is checked first, then each is prepared as prepare_dataset does."""
    from hivg.data import authors_layout as layout

    names = layout.expand_datasets(datasets)
    images = layout.image_root(image_root)
    splits = layout.split_root(images, split_root)
    layout.check_layout(names, splits, images)
    reports = []
    for dataset in names:
        splits_dir, images_dir = layout.dataset_sources(dataset, splits, images)
        reports.append(prepare_dataset(dataset, splits_dir, images_dir, storage,
                                       skip_invalid=skip_invalid, pack_images=pack_images,
                                       pack_max_side=pack_max_side))
    return reports


# ----------------------------------------------------------------------------- one entry point


def parse_images_dirs(values: Optional[list[str]]) -> Optional[Path | dict[str, Path]]:
    """`--images-dir DIR` -> Path; `--images-dir coco=DIR referit=DIR ...` -> mapping."""
    if not values:
        return None
    pairs = [v.split("=", 1) for v in values if "=" in v]
    if not pairs:
        if len(values) > 1:
            raise UserError(f"--images-dir: one folder expected, got {len(values)} "
                            "(SOURCE=DIR pairs are for mixup)")
        return Path(values[0])
    if len(pairs) != len(values):
        raise UserError("--images-dir: give one folder, or SOURCE=DIR pairs, not both")
    return {k: Path(v) for k, v in pairs}


def prepare(dataset: str, storage: str | Path = "runs", *, splits_dir: str | Path | None = None,
            images_dir: str | Path | Mapping[str, str | Path] | None = None, seed: int = 0,
            skip_invalid: bool = False, pack_images: bool = False,
            pack_max_side: Optional[int] = None) -> PrepareReport:
    """What `pipelines/prepare_data.py` does: dispatch on the dataset and the flags given."""
    get_spec(dataset)
    if pack_max_side is not None and (not pack_images or pack_max_side < 1):
        raise UserError("--pack-max-side N needs --pack-images and N >= 1")
    if dataset == "synthetic":
        if splits_dir or images_dir:
            raise UserError("--dataset synthetic is generated: drop --splits-dir/--images-dir")
        return prepare_synthetic(storage, seed, pack_images=pack_images,
                                 pack_max_side=pack_max_side)
    if dataset == "mixup" and splits_dir is None and images_dir is None:
        return prepare_mixup_union(storage, pack_images=pack_images, pack_max_side=pack_max_side)
    if splits_dir is None or images_dir is None:
        raise UserError(f"--dataset {dataset} needs --splits-dir and --images-dir")
    return prepare_dataset(dataset, splits_dir, images_dir, storage, skip_invalid=skip_invalid,
                           pack_images=pack_images, pack_max_side=pack_max_side)
