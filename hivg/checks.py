"""Checks every pipeline runs on its flags before any work (data, weights, Ray, MLflow runs).

Each raises UserError with one line naming the flag, the value and what was expected. They
import nothing heavy (no torch, no Ray): a bad flag fails in well under a second.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
import tempfile
from pathlib import Path

from hivg.errors import UserError

# Run, study and experiment names become folder names and S3 keys.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_HOST_PORT = re.compile(r"^(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")
# The URI schemes MLflow's tracking store accepts (a plain path is a file store); a
# database scheme may carry a driver (postgresql+psycopg2://).
MLFLOW_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql",
                  "databricks", "databricks-uc", "uc")
INSTALL = 'pip install -e ".[{extra}]"'


def require_module(module: str, extra: str, needed_for: str) -> None:
    """`needed_for` needs `module`, which comes with the project's `extra`."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        found = False
    if not found:
        raise UserError(f"{needed_for} needs {module}, which is not installed: "
                        + INSTALL.format(extra=extra))


def check_count(flag: str, value: float | None, minimum: float, *, integer: bool = True,
                above: bool = False) -> None:
    """`value` is None (unset) or a finite number >= `minimum` (> with `above`)."""
    if value is None:
        return
    if not math.isfinite(value) or value < minimum or (above and value == minimum):
        what = "an integer" if integer else "a number"
        raise UserError(f"{flag} {value:g}: expected {what} {'>' if above else '>='} "
                        f"{minimum:g}")


def check_name(flag: str, name: str | None) -> None:
    """A name that is one folder: letters, digits and ._- only, not starting with a dot."""
    if name is not None and not _SAFE_NAME.match(name):
        raise UserError(f"{flag} {name!r}: expected letters, digits, '.', '_' or '-' only, "
                        "not starting with '.' (it names a folder)")


def check_storage(storage: str | Path, flag: str = "--storage") -> None:
    """A folder that is (or can be made) writable, or a reachable, writable S3 bucket."""
    from hivg.orchestration.remote_storage import open_storage

    remote = open_storage(storage)  # UserError for an unknown scheme
    if remote is not None:
        remote.check()
        return
    path = Path(storage).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {storage}: not a folder (a file is there)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {storage}: {existing} is a file, not a folder")
    try:  # a real write: os.access says yes to root on a read-only file system
        fd, probe = tempfile.mkstemp(prefix=".hivg-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {storage}: not writable (cannot write in {existing}: "
                        f"{e.strerror})") from None


def check_storage_readable(storage: str | Path, flag: str = "--storage") -> None:
    """For pipelines that only read: a folder that exists, or a reachable bucket."""
    from hivg.orchestration.remote_storage import open_storage

    remote = open_storage(storage)
    if remote is not None:
        remote.check()
    elif not Path(storage).expanduser().is_dir():
        raise UserError(f"{flag} {storage}: no such folder")


def check_mlflow(uri: str | None, storage: str | Path, enabled: bool = True) -> None:
    """MLflow installed, the tracking URI's scheme one MLflow knows, its server answering."""
    if not enabled:
        return
    require_module("mlflow", "cluster", "MLflow tracking (or pass --no-mlflow)")
    check_mlflow_scheme(uri or os.environ.get("MLFLOW_TRACKING_URI"))
    from hivg.tracking import check_reachable, resolve_tracking_uri

    check_reachable(resolve_tracking_uri(uri, str(storage)))


def check_mlflow_scheme(uri: str | None, flag: str = "--mlflow-uri") -> None:
    if not uri or "://" not in uri:
        return  # unset, a plain path (a file store) or `databricks`
    scheme = uri.split("://", 1)[0].lower()
    if scheme.split("+", 1)[0] not in MLFLOW_SCHEMES:
        raise UserError(f"{flag} {uri.split('://', 1)[0]}://...: unknown tracking URI scheme "
                        f"{scheme!r} (expected one of {', '.join(MLFLOW_SCHEMES)}, or a path)")


def check_address(address: str | None, flag: str = "--address") -> None:
    """Ray installed when a cluster is named; `auto`, `local`, HOST:PORT or ray://HOST:PORT."""
    if address is None:
        return
    require_module("ray", "cluster", f"{flag}")
    if address in ("auto", "local"):
        return
    match = _HOST_PORT.match(address)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise UserError(f"{flag} {address}: expected auto, HOST:PORT or ray://HOST:PORT "
                        "(port 1-65535)")


def check_device(device: str, flag: str = "--device") -> None:
    """auto, cpu, cuda or cuda:N, and CUDA (with device N) present when asked for."""
    at = f"{flag}{device}" if flag.endswith("=") else f"{flag} {device}"
    if not _DEVICE.match(device):
        raise UserError(f"{at}: expected auto, cpu, cuda or cuda:N")
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"{at}: CUDA is not available on this machine (use cpu or auto)")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise UserError(f"{at}: this machine has {torch.cuda.device_count()} CUDA "
                        "device(s)")


# -- what each pipeline checks --------------------------------------------------------------
def check_train_args(args):
    """pipelines/train.py's flags and config; returns the config, resolved in its storage
    (what --dry-run prints)."""
    from hivg.cli import resolve_config, with_storage_defaults
    from hivg.orchestration.remote_storage import open_storage

    check_count("--workers", args.workers, 1)
    check_count("--cpus-per-worker", args.cpus_per_worker, 0, integer=False, above=True)
    check_count("--gpus-per-worker", args.gpus_per_worker, 0, integer=False)
    check_count("--max-failures", args.max_failures, 0)
    check_name("--name", args.name)
    check_name("--experiment", args.experiment)
    check_address(args.address)
    if args.workers is not None:
        require_module("ray", "cluster", f"--workers {args.workers}")
    remote = open_storage(args.storage)
    storage = remote.mirror if remote else Path(args.storage)
    return with_storage_defaults(resolve_config(args.config, args.preset, args.overrides),
                                 storage)


def check_train_services(args, config) -> None:
    """What pipelines/train.py needs beyond its flags: the device, the storage, MLflow."""
    check_device(config.device, "device=")
    check_storage(args.storage)
    check_mlflow(args.mlflow_uri, args.storage, enabled=not args.no_mlflow)


def check_study_args(args, kind: str) -> None:
    """pipelines/ablate.py and sweep.py: the flags (0 means 0 or is refused, never the
    default), before the study file is read."""
    check_count("--num-samples", getattr(args, "num_samples", None), 1)
    check_count("--max-concurrent", args.max_concurrent, 1)
    check_count("--workers-per-trial", args.workers_per_trial, 0)
    check_count("--cpus-per-worker", args.cpus_per_worker, 0, integer=False, above=True)
    check_count("--gpus-per-worker", args.gpus_per_worker, 0, integer=False)
    check_name("--name", args.name)


def check_study_services(args, kind: str) -> None:
    """ablate.py and sweep.py after the study file loaded (a bad file is named before any
    service is touched or the storage made): extras, Ray address, storage, MLflow."""
    require_module("ray", "cluster", "a study (Ray Tune)")
    if kind == "space":
        require_module("optuna", "cluster", "a search (Optuna TPE)")
    check_address(args.address)
    check_storage(args.storage)
    check_mlflow(args.mlflow_uri, args.storage, enabled=not args.no_mlflow)
