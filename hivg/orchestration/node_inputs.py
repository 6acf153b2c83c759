"""A run's inputs on every node, with S3 storage.

With `--storage s3://bucket/prefix` the driver prepares the data (`data/DATASET/`) and the
starting weights (`weights/...`) in its mirror, and a trial or a Ray Train worker may run
on any node, whose mirror is its own (the same path on every node: `~/.cache/hivg/mirror`
under one HOME, or $HIVG_MIRROR_DIR). So the driver pushes those inputs to the bucket once
(`share_inputs`: files already there with the same size are skipped), and whoever trains
pulls what its node lacks (`fetch_inputs`) before it reads them. Inputs outside the mirror
(a shared folder, s3:// data) are left as they are.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import pyarrow.fs as pafs

from hivg.config import Config
from hivg.orchestration.remote_storage import RemoteStorage


def _in_mirror(path: str | None, remote: RemoteStorage) -> str | None:
    """`path` relative to the mirror (the bucket key under the prefix), else None."""
    if not path or "://" in path or path.startswith("@"):
        return None
    try:
        return Path(path).resolve().relative_to(remote.mirror).as_posix()
    except ValueError:
        return None


def input_keys(config: Config, remote: RemoteStorage) -> list[str]:
    """The run's inputs that live in the mirror, relative to it: the dataset's folder and
    the weights file."""
    keys = []
    if config.data.data_dir:
        data = _in_mirror(str(Path(config.data.data_dir) / config.data.dataset), remote)
        if data:
            keys.append(data)
    weights = _in_mirror(config.model.weights, remote)
    if weights:
        keys.append(weights)
    return keys


def _local_files(path: Path) -> dict[str, int]:
    if path.is_file():
        return {"": path.stat().st_size}
    if not path.is_dir():
        return {}
    return {p.relative_to(path).as_posix(): p.stat().st_size for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)}


def _remote_files(remote: RemoteStorage, key: str) -> dict[str, int]:
    listed = remote.sizes(key)
    if listed:
        return listed
    size = remote.file_size(key)  # retried through an outage, as every transfer
    return {} if size is None else {"": size}


def share_inputs(config: Config, remote: RemoteStorage,
                 log: Callable[[str], None] = print) -> int:
    """Upload the run's mirrored inputs the bucket lacks; return how many files. A folder
    the bucket does not hold yet goes up in one threaded copy."""
    sent = 0
    for key in input_keys(config, remote):
        local = remote.mirror / key
        there = _remote_files(remote, key)
        todo = {rel: size for rel, size in _local_files(local).items() if there.get(rel) != size}
        if not todo:
            continue
        if local.is_dir() and not there:
            pafs.copy_files(str(local), remote.key(key), source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=remote.fs, use_threads=True)
        else:
            for rel in sorted(todo):
                remote.upload(local / rel if rel else local, f"{key}/{rel}" if rel else key)
        log(f"inputs: {len(todo)} file(s) of {key} pushed to {remote.url(key)}")
        sent += len(todo)
    return sent


def fetch_inputs(config: Config, remote: RemoteStorage) -> int:
    """Download the run's mirrored inputs this node lacks (or holds in another size);
    return how many files. A folder this node lacks arrives whole (one threaded copy into
    a temporary folder, renamed); single files arrive whole too."""
    fetched = 0
    for key in input_keys(config, remote):
        local = remote.mirror / key
        there = _remote_files(remote, key)
        have = _local_files(local)
        todo = sorted(rel for rel, size in there.items() if have.get(rel) != size)
        if todo and not have and "" not in there:
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.part")
            try:
                pafs.copy_files(remote.key(key), str(tmp), source_filesystem=remote.fs,
                                destination_filesystem=pafs.LocalFileSystem(), use_threads=True)
                try:
                    os.rename(tmp, local)
                except OSError:  # another process on this node got it here first
                    pass
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            for rel in todo:
                remote.download(f"{key}/{rel}" if rel else key, local / rel if rel else local)
        fetched += len(todo)
    return fetched


__all__ = ["input_keys", "share_inputs", "fetch_inputs"]
