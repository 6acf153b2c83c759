"""A content-addressed cache of finished HiLoRA stages.

Stage k of a run is a pure function (up to the noise of a fresh random draw) of the
config that reaches it: model, losses, data, optimiser, policy and stages 0..k, seed,
precision, device type and world size, plus the prepared data and the code. Two runs (or
two trials of a sweep) that agree on all of that share stage k: the second one loads the
first one's best checkpoint instead of training it again. `stage_key` turns those inputs
into a key; `StageCache` stores one entry per key under `{storage}/stage-cache/{key}/`:

    best.pt        the stage's best-on-val checkpoint (the trainer's STAGE_best.pt)
    metrics.json   the stage's metrics.jsonl rows (a JSON list)
    info.json      what the publisher recorded: stage name, best epoch, val/acc50, ...
    COMPLETE       written last: sha256 and size of each file above

An entry becomes visible only by an atomic rename of a fully written (and fsynced)
temporary folder, so a reader never sees a torn entry. A folder under `{key}` that fails
verification (a missing COMPLETE, a hash mismatch, unreadable JSON) is a miss: it is renamed
aside to `{key}.corrupt-{uuid}` (atomic, so a concurrent reader never sees half a deletion)
and reported through the `log` callable. Reusing a stage is never less correct than
training it: the worst case of any race is a lost entry, i.e. a later miss.

Plain Python and PyTorch: no Ray, MLflow or Optuna (hivg.train's layering rule).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from hivg.config import Config
from hivg.errors import UserError
from hivg.train.profile import resolve_profile

# Bump when the meaning of a key or the layout of an entry changes: old entries become misses.
KEY_SCHEMA = 1
ENTRY_FORMAT = 1
KEY_LENGTH = 20
CACHE_DIRNAME = "stage-cache"
CHECKPOINT, METRICS, INFO, COMPLETE = "best.pt", "metrics.json", "info.json", "COMPLETE"
ENTRY_FILES = (CHECKPOINT, METRICS, INFO)
_KEY_RE = re.compile(r"^[0-9A-Za-z_-]{1,128}$")  # no '.', no '/': never a temp/aside name
_CHUNK = 1 << 20

# DataConfig fields that do not change what a stage learns or how its best epoch is chosen.
# Every other data field (and any field added later) is part of the key: safe by default.
DATA_FIELDS_EXCLUDED = {
    # The folder's location is not its content: data_hash (data_fingerprint) stands in.
    "data_dir": "replaced by the content hash of the prepared manifests (data_hash)",
    # Throughput only. Not bit-neutral (with workers > 0 augmentation draws come from
    # per-worker seeded RNGs instead of the main process's), but the same experiment: a
    # different draw of the same distribution, like a resumed run.
    "num_workers": "loader throughput; the same experiment (a different augmentation draw)",
    # Test splits are evaluated once after the last stage; no stage's training or
    # best-epoch selection reads them.
    "test_splits": "evaluated only after the last stage; never read by a stage",
}
# Kept on purpose although they look like bookkeeping:
#   val_split, max_eval_samples: they define the validation set, which picks the stage's
#       best epoch (and so the checkpoint the next stage starts from).
#   dataset: redundant with data_hash, but cheap and keeps keys of look-alike datasets apart.
# Config fields outside model/loss/data/optim/hilora that are left out of the key:
#   variant, preset: labels only (recorded, never change behaviour).
#   device: replaced by the caller's resolved device type ("cuda:1" and "cuda" agree).
#   precision: replaced by the effective precision on that device type (auto = fp32 on CPU),
#       as hivg.train.profile resolves it together with `profile`.
#   profile: enters through the precision and model.attention it resolves to.
# Stage names stay in the key: the paper policy names adapters after the stage
# (`lora.stage2`), so a renamed stage yields a checkpoint with other state-dict keys.


# ----------------------------------------------------------------------------- fingerprints


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _package_dir() -> Path:
    import hivg
    return Path(hivg.__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def code_fingerprint(package_dir: Optional[Path] = None) -> str:
    """`{hivg version}-{sha256}` over every *.py, *.yaml and *.json file of the hivg package
    (relative paths and bytes), so an uncommitted edit changes it. Cached per process
    (per package_dir; `code_fingerprint.cache_clear()` forgets)."""
    import hivg
    root = Path(package_dir).resolve() if package_dir is not None else _package_dir()
    files = sorted((p for p in root.rglob("*")
                    if p.suffix in (".py", ".yaml", ".json") and p.is_file()
                    and "__pycache__" not in p.relative_to(root).parts),
                   key=lambda p: p.relative_to(root).as_posix())
    h = hashlib.sha256()
    for p in files:
        rel = p.relative_to(root).as_posix().encode()
        data = p.read_bytes()
        h.update(len(rel).to_bytes(8, "little") + rel + len(data).to_bytes(8, "little"))
        h.update(data)
    return f"{hivg.__version__}-{h.hexdigest()}"


def data_fingerprint(data_dir: str | Path, dataset: str) -> str:
    """sha256 over the prepared manifests `{data_dir}/{dataset}/*.parquet` (names and bytes)
    and baselines.json when present. Local folders and URIs (through pyarrow) alike.

    Image files and shards are not hashed: every manifest row names its image (image_path,
    or shard_file + shard_row), and preparation rewrites the manifests whenever it writes
    images. Replacing images in place without preparing again goes unnoticed."""
    import pyarrow.fs as pafs

    from hivg.data.manifest import dataset_dir, filesystem

    folder = dataset_dir(data_dir, dataset)
    fs, inner = filesystem(folder)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        raise UserError(f"{folder}: no prepared dataset {dataset!r} (run "
                        f"pipelines/prepare_data.py --dataset {dataset})")
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
    # Hidden files are half-written temporaries (manifest.write_table): not part of the data.
    names = sorted(Path(i.path).name for i in infos if i.type == pafs.FileType.File
                   and not Path(i.path).name.startswith(".")
                   and (i.path.endswith(".parquet") or Path(i.path).name == "baselines.json"))
    if not any(n.endswith(".parquet") for n in names):
        raise UserError(f"{folder}: no prepared manifests (*.parquet) for dataset {dataset!r}")
    h = hashlib.sha256()
    for name in names:
        h.update(len(name).to_bytes(8, "little") + name.encode())
        with fs.open_input_stream(f"{inner.rstrip('/')}/{name}") as f:
            size = 0
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
        h.update(size.to_bytes(8, "little"))
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _cached_file_hash(path: str, size: int, mtime_ns: int) -> str:
    return _sha256_file(Path(path))


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes, cached per process by (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    return _cached_file_hash(str(p), st.st_size, st.st_mtime_ns)


def _weights_identity(weights: Optional[str], clip: str) -> Optional[str]:
    """The starting weights by content: a file's sha256 (so the same file at another path,
    e.g. the synthetic pre-training under another storage, gives the same key, and a file
    replaced in place does not; a model folder: its weights file); an open_clip tag by name
    (open_clip pins what it downloads; model.clip is in the key already); symbolic names
    (`@synthetic-pretrained`), `random` and None as given."""
    from hivg.errors import WeightsError
    from hivg.model.weight_files import folder_weights_file
    from hivg.model.weights import classify

    try:
        source = classify(weights, clip)
        if source.kind == "tag":
            return f"open_clip:{weights}"
        if source.kind == "folder":
            return "sha256:" + file_fingerprint(folder_weights_file(Path(weights).expanduser()))
        if source.kind == "file":
            return "sha256:" + file_fingerprint(Path(weights).expanduser())
    except WeightsError as e:
        raise UserError(f"model.weights: {e}") from None
    return weights


# ----------------------------------------------------------------------------- the key


def stage_key_payload(config: Config, stage_index: int, data_hash: str, code_hash: str,
                      device_type: str, world_size: int,
                      weights_hash: Optional[str] = None) -> dict[str, Any]:
    """Everything that determines stage `stage_index`'s result, as plain JSON data."""
    stages = config.hilora.stages
    if not 0 <= stage_index < len(stages):
        raise ValueError(f"stage_index {stage_index}: expected 0..{len(stages) - 1}")
    if world_size < 1:
        raise ValueError(f"world_size {world_size}: expected >= 1")
    device_type = str(device_type).split(":")[0]
    model = dataclasses.asdict(config.model)
    # The profile (hivg.train.profile) decides the attention and autocast actually used;
    # with profile auto both equal config.model.attention and the autocast hivg.train.profile
    # resolves on that device.
    profile = resolve_profile(config, device_type)
    model["attention"] = profile.attention
    model["weights"] = weights_hash if weights_hash is not None else \
        _weights_identity(config.model.weights, config.model.clip)
    data = {k: v for k, v in dataclasses.asdict(config.data).items()
            if k not in DATA_FIELDS_EXCLUDED}
    return {
        "schema": KEY_SCHEMA,
        "stage_index": stage_index,
        "model": model,
        "loss": dataclasses.asdict(config.loss),
        "data": data,
        "optim": dataclasses.asdict(config.optim),
        "hilora": {"policy": config.hilora.policy,
                   # Stages 0..k only: later stages never influence stage k.
                   "stages": [dataclasses.asdict(s) for s in stages[:stage_index + 1]]},
        "seed": config.seed,
        "precision": "bf16" if profile.amp_dtype == "bfloat16" else "fp32",
        "device_type": device_type,
        # The global batch (and, with optim.scale_lr, the lr) and data sharding depend on it.
        "world_size": world_size,
        "data_hash": data_hash,
        "code_hash": code_hash,
    }


def stage_key(config: Config, stage_index: int, data_hash: str, code_hash: str,
              device_type: str, world_size: int,
              weights_hash: Optional[str] = None) -> str:
    """Hex sha256 (first 20 characters) of the canonical JSON of `stage_key_payload`.

    device_type: "cpu" or "cuda" (a "cuda:N" suffix is dropped), as the trainer resolved it.
    world_size: number of training workers. weights_hash: precomputed content hash of
    model.weights (default: hashed here, cached per process)."""
    payload = stage_key_payload(config, stage_index, data_hash, code_hash, device_type,
                                world_size, weights_hash)
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


def cache_root(storage: str | Path) -> Path:
    """`{storage}/stage-cache`, the folder a StageCache is given."""
    return Path(storage) / CACHE_DIRNAME


# ----------------------------------------------------------------------------- the store


class StageCacheError(Exception):
    """Publishing failed (one line). Callers may treat it as non-fatal: the run's own files
    are untouched; the stage just is not shared."""


class _Invalid(Exception):
    """An entry that fails verification; the message is the reason."""


@dataclass(frozen=True)
class CachedStage:
    key: str
    path: Path                  # the entry folder
    checkpoint: Path            # {path}/best.pt
    checkpoint_sha256: str      # as verified by lookup; a caller may re-check before loading
    metrics: list[dict[str, Any]]
    info: dict[str, Any]

    def load(self, map_location: Any = "cpu") -> dict[str, Any]:
        """The checkpoint payload (weights_only=True, through hivg.train.checkpoint)."""
        from hivg.train.checkpoint import load_checkpoint
        return load_checkpoint(self.checkpoint, map_location)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> dict[str, Any]:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _copy_hashing(src: Path, dst: Path) -> dict[str, Any]:
    h, size = hashlib.sha256(), 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return {"sha256": h.hexdigest(), "size": size}


def _echo(message: str) -> None:
    print(message, flush=True)


class StageCache:
    """Entries `{root}/{key}/`; temporaries `{root}/.tmp-{key}-{uuid}`; rejected entries
    `{root}/{key}.corrupt-{uuid}`. `log` receives one line per rejected entry."""

    def __init__(self, root: str | Path, log: Optional[Callable[[str], None]] = None) -> None:
        self.root = Path(root)
        # The cache travels to Ray workers by pickle, and Ray may replace builtins.print in
        # the driver meanwhile (tqdm_ray, Train's print patch): the original print then no
        # longer pickles by name. A module function always does.
        self.log = _echo if log is print else (log or (lambda _msg: None))

    @classmethod
    def for_storage(cls, storage: str | Path, log: Optional[Callable[[str], None]] = None
                    ) -> "StageCache":
        return cls(cache_root(storage), log)

    # -- reading -------------------------------------------------------------------------
    def lookup(self, key: str) -> Optional[CachedStage]:
        """The verified entry of `key`, or None (absent, or invalid and moved aside)."""
        entry = self._entry(key)
        try:
            ident = os.stat(entry)
        except FileNotFoundError:
            return None
        try:
            return self._verify(key, entry)
        except _Invalid as e:
            self._reject(key, entry, ident, str(e))
            return None

    def entries(self) -> list[str]:
        """Keys of the valid entries (each one verified: reads every file)."""
        if not self.root.is_dir():
            return []
        keys = sorted(p.name for p in self.root.iterdir() if _KEY_RE.match(p.name))
        return [k for k in keys if self.lookup(k) is not None]

    # -- writing -------------------------------------------------------------------------
    def publish(self, key: str, checkpoint: str | Path, metrics: list[dict[str, Any]],
                info: dict[str, Any]) -> Path:
        """Store a finished stage; return the entry folder. When another publisher got there
        first with a valid entry, that entry wins and ours is discarded."""
        entry = self._entry(key)
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise StageCacheError(f"{checkpoint}: checkpoint to publish not found")
        info = {**info, "key": key}
        info.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{key}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            files = {
                CHECKPOINT: _copy_hashing(checkpoint, tmp / CHECKPOINT),
                METRICS: _write(tmp / METRICS, json.dumps(
                    list(metrics), default=_json_default, indent=1).encode()),
                INFO: _write(tmp / INFO, json.dumps(
                    info, default=_json_default, indent=1, sort_keys=True).encode()),
            }
            _write(tmp / COMPLETE, json.dumps(
                {"format": ENTRY_FORMAT, "key": key, "files": files}, indent=1).encode())
            _fsync_dir(tmp)
            for attempt in range(2):
                if self._try_rename(tmp, entry):
                    _fsync_dir(self.root)
                    return entry
                # Someone else's folder is there: keep it if it is valid.
                if self.lookup(key) is not None:  # an invalid one is moved aside here
                    return entry
            raise StageCacheError(f"stage cache {self.root}: could not publish {key} "
                                  f"(an invalid entry keeps reappearing)")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def sweep(self, older_than_s: float = 24 * 3600) -> int:
        """Delete temporaries of crashed publishers and rejected entries older than
        `older_than_s`; return how many folders went."""
        if not self.root.is_dir():
            return 0
        now, removed = time.time(), 0
        for p in self.root.iterdir():
            if not (p.name.startswith(".tmp-") or ".corrupt-" in p.name):
                continue
            try:
                if now - p.stat().st_mtime >= older_than_s:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    # -- pieces --------------------------------------------------------------------------
    def _entry(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(f"stage cache key {key!r}: expected letters, digits, '-' or '_'")
        return self.root / key

    @staticmethod
    def _try_rename(src: Path, dst: Path) -> bool:
        """Atomic rename; False when dst is taken (POSIX replaces only an empty folder)."""
        try:
            os.rename(src, dst)
            return True
        except OSError:
            if os.path.lexists(dst):
                return False
            raise

    def _verify(self, key: str, entry: Path) -> CachedStage:
        try:
            manifest = json.loads((entry / COMPLETE).read_text())
        except FileNotFoundError:
            raise _Invalid("no COMPLETE marker") from None
        except (OSError, ValueError) as e:
            raise _Invalid(f"unreadable COMPLETE ({type(e).__name__})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise _Invalid("malformed COMPLETE")
        if manifest.get("format") != ENTRY_FORMAT:
            raise _Invalid(f"entry format {manifest.get('format')!r}, expected {ENTRY_FORMAT}")
        if manifest.get("key") != key:
            raise _Invalid(f"COMPLETE names key {manifest.get('key')!r}")
        files = manifest["files"]
        if sorted(files) != sorted(ENTRY_FILES):
            raise _Invalid(f"COMPLETE lists {sorted(files)}, expected {sorted(ENTRY_FILES)}")
        for name in ENTRY_FILES:
            path = entry / name
            expected = files[name]
            try:
                if path.stat().st_size != expected.get("size"):
                    raise _Invalid(f"{name}: size differs from COMPLETE")
                digest = _sha256_file(path)
            except FileNotFoundError:
                raise _Invalid(f"{name}: missing") from None
            except (OSError, AttributeError) as e:
                raise _Invalid(f"{name}: unreadable ({type(e).__name__})") from None
            if digest != expected.get("sha256"):
                raise _Invalid(f"{name}: sha256 differs from COMPLETE")
        try:
            metrics = json.loads((entry / METRICS).read_text())
            info = json.loads((entry / INFO).read_text())
        except (OSError, ValueError) as e:
            raise _Invalid(f"unreadable JSON ({type(e).__name__})") from None
        if not isinstance(metrics, list) or not all(isinstance(r, dict) for r in metrics):
            raise _Invalid(f"{METRICS}: expected a list of objects")
        if not isinstance(info, dict):
            raise _Invalid(f"{INFO}: expected an object")
        return CachedStage(key, entry, entry / CHECKPOINT, files[CHECKPOINT]["sha256"],
                           metrics, info)

    def _reject(self, key: str, entry: Path, ident: os.stat_result, reason: str) -> None:
        """Move an invalid entry aside. If the folder now at `entry` is not the one that was
        verified (another process replaced it meanwhile), put it back when it is valid."""
        aside = self.root / f"{key}.corrupt-{uuid.uuid4().hex}"
        try:
            os.rename(entry, aside)
        except FileNotFoundError:
            return  # another reader moved it first
        except OSError as e:
            self.log(f"stage cache: entry {key} is invalid ({reason}) and could not be "
                     f"moved aside ({type(e).__name__}); treated as a miss")
            return
        moved = os.stat(aside)
        if (moved.st_ino, moved.st_dev) != (ident.st_ino, ident.st_dev):
            try:
                self._verify(key, aside)
            except _Invalid:
                pass
            else:  # a valid entry published after our check: restore it if the slot is free
                if not self._try_rename(aside, entry):
                    shutil.rmtree(aside, ignore_errors=True)
                return
        self.log(f"stage cache: entry {key} is invalid ({reason}); moved aside to "
                 f"{aside.name}, treated as a miss")


__all__ = ["CachedStage", "StageCache", "StageCacheError", "cache_root", "code_fingerprint",
           "data_fingerprint", "file_fingerprint", "stage_key",
           "stage_key_payload", "DATA_FIELDS_EXCLUDED"]
