"""`--storage s3://bucket/prefix`: local mirror folders, pushed to and pulled from S3.

The trainer and the stage cache only ever write local files. With S3 storage those files
live in a mirror folder, `{$HIVG_MIRROR_DIR or ~/.cache/hivg/mirror}/{bucket}/{prefix}/`,
and whoever writes them (the driver, or rank 0 on Ray) copies them to the bucket:

    RemoteStorage   the bucket and prefix, the mirror, file transfers, the up-front check
    RunFolderSync   one run folder: push what changed, pull what differs
    SyncHooks       TrainHooks that push after every epoch's report (rank 0) and let the
                    other ranks pull what rank 0 pushed (they may sit on another node)

Credentials come only from the environment's credential chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a web identity or an instance role), the endpoint from
AWS_ENDPOINT_URL when it is set. No key is ever an argument, logged or pickled: a
RemoteStorage pickles as its URI and builds its S3 client again in each process.

A push uploads the changed files in an order that keeps the bucket resumable at every
moment (everything else, then `checkpoints/last.pt`, then `summary.json`) and then
`.hivg-sync.json`, the sha256 of every file pushed: a pull downloads only the files whose
local copy differs from it.

Outages: every transfer that fails with a transient error (anything but a missing file,
bucket or permission) is retried with exponential backoff for up to
$HIVG_S3_RETRY_BUDGET_S seconds (default 300), with one line when the outage starts and one
when it ends; past the budget it stops with one line (S3OutageError, a UserError).
$HIVG_S3_REQUEST_TIMEOUT_S (default 60) is how long one request may stall before it counts
as failed.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

import pyarrow.fs as pafs

from hivg.errors import UserError
from hivg.run_folder import CHECKPOINTS, LAST, SUMMARY

SCHEME = "s3://"
MIRROR_ENV = "HIVG_MIRROR_DIR"
SYNC_MANIFEST = ".hivg-sync.json"
# Pushed after everything else: a run is resumable from whatever the bucket holds.
PUSH_LAST = (f"{CHECKPOINTS}/{LAST}", SUMMARY)
# (URI, endpoint) pairs this process has checked: the pipeline checks before it prepares
# data, run_training again for every other caller; one round trip is enough.
_CHECKED: set[tuple[str, str]] = set()
RETRY_BUDGET_ENV, DEFAULT_RETRY_BUDGET_S = "HIVG_S3_RETRY_BUDGET_S", 300.0
REQUEST_TIMEOUT_ENV, DEFAULT_REQUEST_TIMEOUT_S = "HIVG_S3_REQUEST_TIMEOUT_S", 60.0
FIRST_RETRY_DELAY_S, MAX_RETRY_DELAY_S = 0.5, 30.0
# Errors no retry will fix: a wrong key, bucket or credential is said at once.
_PERMANENT = ("ACCESS_DENIED", "AccessDenied", "NoSuchBucket", "NO_SUCH_BUCKET",
              "InvalidAccessKeyId", "SignatureDoesNotMatch", "INVALID_ACCESS_KEY_ID")
T = TypeVar("T")


class S3OutageError(UserError):
    """S3 stayed unreachable past the retry budget."""


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise UserError(f"${name}: expected a number of seconds, got {text!r}") from None


def retry_budget_s() -> float:
    return _env_seconds(RETRY_BUDGET_ENV, DEFAULT_RETRY_BUDGET_S)


def _transient(error: OSError) -> bool:
    if isinstance(error, (FileNotFoundError, PermissionError)):
        return False
    return not any(mark in str(error) for mark in _PERMANENT)


def is_remote(storage: str | Path | None) -> bool:
    return str(storage or "").startswith(SCHEME)


def open_storage(storage: str | Path) -> "RemoteStorage | None":
    """A RemoteStorage for an s3:// URI, None for a local folder; UserError otherwise."""
    text = str(storage)
    if is_remote(text):
        return RemoteStorage(text)
    if "://" in text:
        raise UserError(f"--storage {text}: expected a folder or s3://BUCKET/PREFIX")
    return None


def _short(error: Exception) -> str:
    """pyarrow's S3 errors on one line, without the request details."""
    text = " ".join(str(error).split())
    if "': " in text:
        text = text.split("': ", 1)[1]
    return text.split("; Details:")[0][:200]


def _has_credentials() -> bool:
    """Whether the environment's credential chain yields any credentials."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if any(env.get(v) for v in ("AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                                "AWS_CONTAINER_CREDENTIALS_FULL_URI")):
        return True
    try:  # botocore walks the whole chain (config files, instance role) when installed
        import botocore.session
    except ImportError:
        files = (env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
                 env.get("AWS_CONFIG_FILE", "~/.aws/config"))
        return any(Path(f).expanduser().is_file() for f in files) or \
            env.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true"
    return botocore.session.get_session().get_credentials() is not None


class RemoteStorage:
    """`s3://bucket/prefix` and its local mirror folder."""

    def __init__(self, uri: str) -> None:
        text = str(uri)
        bucket, _, prefix = text[len(SCHEME):].partition("/") if is_remote(text) else ("", "", "")
        if not bucket:
            raise UserError(f"--storage {text}: no bucket (expected s3://BUCKET/PREFIX)")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"{SCHEME}{bucket}/{self.prefix}".rstrip("/")
        self._fs: pafs.S3FileSystem | None = None
        self.log: Callable[[str], None] = print  # outage lines

    # Only the URI travels (Ray workers, stage caches): never a client or a credential.
    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"])

    def __repr__(self) -> str:
        return f"RemoteStorage({self.uri!r})"

    @property
    def fs(self) -> pafs.S3FileSystem:
        if self._fs is None:
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            self._fs = pafs.S3FileSystem(
                region=region, endpoint_override=os.environ.get("AWS_ENDPOINT_URL") or None,
                connect_timeout=5,
                request_timeout=_env_seconds(REQUEST_TIMEOUT_ENV, DEFAULT_REQUEST_TIMEOUT_S),
                # Small files go up in one PUT; large ones as a multipart upload.
                allow_delayed_open=True,
                retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3))
        return self._fs

    @property
    def mirror(self) -> Path:
        """This process's local copy of the storage (each node has its own)."""
        base = os.environ.get(MIRROR_ENV) or Path.home() / ".cache" / "hivg" / "mirror"
        return Path(base).expanduser().resolve() / self.bucket / self.prefix

    def key(self, rel: str) -> str:
        """`bucket/prefix/rel`, the path inside the S3 filesystem."""
        return "/".join(p for p in (self.bucket, self.prefix, rel.strip("/")) if p)

    def url(self, rel: str = "") -> str:
        return f"{self.uri}/{rel}".rstrip("/")

    # -- the up-front check ----------------------------------------------------------------
    def check(self) -> None:
        """One-line UserError unless the bucket is reachable, exists and takes a write."""
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        if (self.uri, endpoint) in _CHECKED:
            return
        if not _has_credentials():
            raise UserError(f"--storage {self.uri}: no AWS credentials in the environment "
                            "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
                            "or use an instance role)")
        try:
            info = self.fs.get_file_info(self.bucket)
        except OSError as e:
            raise UserError(f"--storage {self.uri}: cannot reach {endpoint}: {_short(e)}") from None
        if info.type == pafs.FileType.NotFound:
            raise UserError(f"--storage {self.uri}: bucket {self.bucket!r} does not exist "
                            f"at {endpoint}")
        probe = f".hivg-write-check-{uuid.uuid4().hex}"
        try:  # once, without retries: a bad endpoint is said at once
            self._write_bytes(probe, b"ok")
            self.fs.delete_file(self.key(probe))
        except OSError as e:
            raise UserError(f"--storage {self.uri}: cannot write there: {_short(e)}") from None
        _CHECKED.add((self.uri, endpoint))

    # -- riding out outages ---------------------------------------------------------------
    def _retrying(self, what: str, action: Callable[[], T]) -> T:
        """`action()`, retried with exponential backoff while S3 fails transiently, up to the
        retry budget; one line when an outage starts, one when it ends."""
        budget, delay, started = retry_budget_s(), FIRST_RETRY_DELAY_S, None
        while True:
            try:
                result = action()
            except OSError as e:
                if not _transient(e):
                    raise
                now = time.monotonic()
                if started is None:
                    started = now
                    self.log(f"S3 outage: {what} on {self.uri} failed ({_short(e)}); "
                             f"retrying for up to {budget:.0f}s")
                if now - started >= budget:
                    raise S3OutageError(
                        f"{self.uri}: S3 unreachable for {now - started:.0f}s, past the retry "
                        f"budget (${RETRY_BUDGET_ENV}={budget:.0f}); gave up on {what}: "
                        f"{_short(e)}") from None
                time.sleep(min(delay, max(budget - (now - started), 0.0)))
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
                continue
            if started is not None:
                self.log(f"S3 back after {time.monotonic() - started:.0f}s: {what} done")
            return result

    # -- transfers -------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self._retrying(f"checking {rel}", lambda: self.fs.get_file_info(
            self.key(rel)).type == pafs.FileType.File)

    def file_size(self, rel: str) -> int | None:
        """The size of the file `rel`; None when it is not a file."""
        info = self._retrying(f"checking {rel}", lambda: self.fs.get_file_info(self.key(rel)))
        return info.size if info.type == pafs.FileType.File else None

    def list(self, rel: str) -> list[str]:
        """Files under `rel`, as paths relative to it."""
        return sorted(self.sizes(rel))

    def sizes(self, rel: str) -> dict[str, int]:
        """Files under `rel` (paths relative to it) and their sizes in bytes, in one listing."""
        return self._retrying(f"listing {rel or '/'}", lambda: self._sizes(rel))

    def _sizes(self, rel: str) -> dict[str, int]:
        base = self.key(rel)
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return {}
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        return {i.path[len(base) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}

    def upload(self, local: Path, rel: str) -> None:
        self._retrying(f"upload of {rel}", lambda: pafs.copy_files(
            str(local), self.key(rel), source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.fs))

    def download(self, rel: str, local: Path) -> None:
        """Into a temporary file, then renamed: a reader never sees half a file."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.part")
        try:
            self._retrying(f"download of {rel}", lambda: pafs.copy_files(
                self.key(rel), str(tmp), source_filesystem=self.fs,
                destination_filesystem=pafs.LocalFileSystem()))
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def read_bytes(self, rel: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                with self.fs.open_input_stream(self.key(rel)) as f:
                    return f.read()
            except FileNotFoundError:
                return None

        return self._retrying(f"reading {rel}", read)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._retrying(f"writing {rel}", lambda: self._write_bytes(rel, data))

    def _write_bytes(self, rel: str, data: bytes) -> None:
        with self.fs.open_output_stream(self.key(rel)) as f:
            f.write(data)

    def copy(self, rel: str, to: str) -> None:
        """One file, within the bucket, server-side (S3 CopyObject: no bytes sent)."""
        self._retrying(f"copying {rel}", lambda: self.fs.copy_file(self.key(rel), self.key(to)))

    def move(self, rel: str, to: str) -> None:
        """One file, within the bucket (S3: a copy, then a delete)."""
        self._retrying(f"moving {rel}", lambda: self.fs.move(self.key(rel), self.key(to)))

    def delete(self, rel: str) -> None:
        def delete() -> None:
            try:
                self.fs.delete_file(self.key(rel))
            except FileNotFoundError:
                pass

        self._retrying(f"deleting {rel}", delete)


def _sha256(path: Path) -> str:
    from hivg.train.stage_cache import file_fingerprint  # cached by (path, size, mtime)

    return file_fingerprint(path)


class RunFolderSync:
    """The run folder `{mirror}/{name}` and its copy `s3://bucket/prefix/{name}/`."""

    def __init__(self, storage: RemoteStorage, name: str) -> None:
        self.storage, self.name = storage, name
        self._remote: dict[str, dict[str, Any]] | None = None  # the manifest last seen

    def __getstate__(self) -> dict[str, Any]:
        return {"storage": self.storage, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["storage"], state["name"])

    @property
    def local(self) -> Path:
        return self.storage.mirror / self.name

    @property
    def url(self) -> str:
        return self.storage.url(self.name)

    def _origin(self) -> str:
        return f"{socket.gethostname()}:{self.local}"

    def _manifest(self) -> dict[str, Any]:
        data = self.storage.read_bytes(f"{self.name}/{SYNC_MANIFEST}")
        manifest = json.loads(data) if data else {}
        return manifest if isinstance(manifest.get("files"), dict) else {"files": {}}

    def _local_files(self) -> list[str]:
        if not self.local.is_dir():
            return []
        return sorted(p.relative_to(self.local).as_posix() for p in self.local.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    def remote_has(self, rel: str) -> bool:
        return self.storage.exists(f"{self.name}/{rel}")

    def push(self) -> int:
        """Upload the files that changed since the last push; return how many."""
        if self._remote is None:
            self._remote = self._manifest()["files"]
        files = {rel: {"sha256": _sha256(self.local / rel), "size": (self.local / rel).stat().st_size}
                 for rel in self._local_files()}
        changed = [rel for rel in files if self._remote.get(rel) != files[rel]]
        if not changed:
            return 0
        changed.sort(key=lambda rel: PUSH_LAST.index(rel) + 1 if rel in PUSH_LAST else 0)
        # A file whose bytes the bucket already holds in this folder (best.pt is the last
        # stage's best; a stage's best is often the epoch's checkpoint) is copied there,
        # server-side, instead of sent again.
        held = {info["sha256"]: rel for rel, info in self._remote.items()
                if files.get(rel) == info}
        for rel in changed:
            twin = held.get(files[rel]["sha256"])
            if twin is not None:
                self.storage.copy(f"{self.name}/{twin}", f"{self.name}/{rel}")
            else:
                self.storage.upload(self.local / rel, f"{self.name}/{rel}")
            held.setdefault(files[rel]["sha256"], rel)
        manifest = {"origin": self._origin(), "files": {**self._remote, **files}}
        self.storage.write_bytes(f"{self.name}/{SYNC_MANIFEST}",
                                 json.dumps(manifest, indent=1, sort_keys=True).encode())
        self._remote = manifest["files"]
        return len(changed)

    def pull(self, foreign_only: bool = False) -> int:
        """Download the files whose local copy differs from the bucket's; return how many.
        `foreign_only`: do nothing when this very folder pushed last (a rank on the node of
        the writer, whose files are already here and may be newer)."""
        manifest = self._manifest()
        if foreign_only and manifest.get("origin") == self._origin():
            return 0
        known = manifest["files"]
        pulled = 0
        for rel in self.storage.list(self.name):
            if rel.startswith(".") or "/." in rel:
                continue
            path = self.local / rel
            if rel in known and path.is_file() and _sha256(path) == known[rel]["sha256"]:
                continue
            self.storage.download(f"{self.name}/{rel}", path)
            pulled += 1
        self._remote = known
        return pulled


class SyncHooks:
    """Wraps TrainHooks: rank 0 pushes the run folder before each epoch's report and at
    each barrier; the other ranks pull after each barrier (from another node, their mirror
    is their own). Everything else is the wrapped hooks'."""

    def __init__(self, inner: Any, sync: RunFolderSync) -> None:
        self._inner, self._sync = inner, sync

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        if self._inner.is_main:  # pushed first: what Ray records as saved is in the bucket
            self._sync.push()
        self._inner.report(metrics, checkpoint)

    def barrier(self) -> None:
        if self._inner.is_main:
            self._sync.push()
        self._inner.barrier()
        if not self._inner.is_main:
            self._sync.pull(foreign_only=True)


__all__ = ["RemoteStorage", "RunFolderSync", "SyncHooks", "S3OutageError", "is_remote",
           "open_storage", "MIRROR_ENV", "RETRY_BUDGET_ENV"]
