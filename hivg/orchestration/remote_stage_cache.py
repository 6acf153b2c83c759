"""The stage cache on S3: `s3://bucket/prefix/stage-cache/{key}/`, read through the mirror.

An entry on S3 holds the same files as a local one (best.pt, metrics.json, info.json) and
its COMPLETE marker (their sha256 and sizes). Publishing uploads the files first and the
marker last; S3 writes whole objects atomically, so an entry exists for readers exactly
when its marker does. A lookup downloads an entry only when its marker is there, into a
temporary folder of the local mirror renamed into place, and then verifies it exactly as a
local entry is verified (hashes): a torn or corrupt entry (two publishers racing on a key,
a damaged object) is a miss, and its marker is deleted so nobody downloads it again.
"""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from hivg.orchestration.remote_storage import RemoteStorage
from hivg.train.stage_cache import (CACHE_DIRNAME, COMPLETE, ENTRY_FILES, CachedStage,
                                    StageCache)


class RemoteStageCache(StageCache):
    """A StageCache in this process's mirror of `storage`, backed by the bucket."""

    def __init__(self, storage: RemoteStorage, log: Optional[Callable[[str], None]] = None
                 ) -> None:
        self.storage = storage
        super().__init__(storage.mirror / CACHE_DIRNAME, log)

    # A worker on another node rebuilds the mirror path from its own environment.
    def __getstate__(self) -> dict[str, Any]:
        return {"storage": self.storage, "log": self.log}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["storage"], state["log"])

    def _remote(self, key: str, name: str) -> str:
        return f"{CACHE_DIRNAME}/{key}/{name}"

    def lookup(self, key: str) -> Optional[CachedStage]:
        hit = super().lookup(key)  # a verified local copy is as good as the bucket's
        if hit is not None:
            return hit
        try:
            if not self.storage.exists(self._remote(key, COMPLETE)):
                return None
            self._download(key)
        except OSError as e:
            self.log(f"stage cache: entry {key} could not be read from {self.storage.uri}: "
                     f"{' '.join(str(e).split())[:200]}; treated as a miss")
            return None
        hit = super().lookup(key)  # verifies the hashes; an invalid entry is moved aside
        if hit is None:
            self.storage.delete(self._remote(key, COMPLETE))
            self.log(f"stage cache: entry {key} on {self.storage.uri} is invalid; its marker "
                     "was deleted")
        return hit

    def publish(self, key: str, checkpoint: str | Path, metrics: list[dict[str, Any]],
                info: dict[str, Any]) -> Path:
        entry = super().publish(key, checkpoint, metrics, info)  # the mirror's entry
        if self.storage.exists(self._remote(key, COMPLETE)):
            return entry  # another publisher's entry is there: it wins (as locally)
        for name in ENTRY_FILES:
            self.storage.upload(entry / name, self._remote(key, name))
        self.storage.upload(entry / COMPLETE, self._remote(key, COMPLETE))  # last: now visible
        return entry

    def _download(self, key: str) -> None:
        """The bucket's entry into `{root}/{key}` (via a temporary folder and a rename)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{key}-{uuid.uuid4().hex}"
        try:
            for name in (COMPLETE, *ENTRY_FILES):  # the marker first: files newer than it fail
                self.storage.download(self._remote(key, name), tmp / name)
            # False when another reader got it here first: lookup verifies theirs.
            self._try_rename(tmp, self.root / key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def stage_cache_for(storage: str | Path, log: Optional[Callable[[str], None]] = None
                    ) -> StageCache:
    """`{storage}/stage-cache`: a local folder, or the bucket through the mirror."""
    from hivg.orchestration.remote_storage import open_storage

    remote = open_storage(storage)
    return RemoteStageCache(remote, log) if remote else StageCache.for_storage(storage, log)


__all__ = ["RemoteStageCache", "stage_cache_for"]
