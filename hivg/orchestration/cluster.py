"""The cluster files: `cluster.yaml` (AWS) and what is derived from it.

    check(path)                  Ray's own preparation and validation of a cluster file
    local_config(aws, ...)       the same setup and start commands for Ray's `local` provider
                                 (machines you already have, reached over SSH)
    forward_command(path)        ssh port-forwarding of the dashboard and the MLflow UI
    locked_requirements()        the pinned closure of `hivg[cluster]` (constraints.txt)

Only `cluster.yaml` is written by hand: `cluster-local.yaml` is generated from it
(`python pipelines/cluster.py local ...`), so what runs on test hosts is what AWS runs.
"""
from __future__ import annotations

import copy
import importlib.metadata
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from hivg.errors import UserError

# What the local provider keeps from the AWS file, verbatim (node types and the provider
# are the local provider's own; initialization_commands carry the storage, given anew).
SHARED_KEYS = ("file_mounts", "rsync_exclude", "rsync_filter", "setup_commands",
               "head_start_ray_commands", "worker_start_ray_commands")
DASHBOARD_PORT = 8265
MLFLOW_ENV = "~/.hivg/mlflow.env"
STORAGE_ENV_COMMAND = 'mkdir -p ~/.hivg && echo "export HIVG_STORAGE={storage}" > ~/.hivg/storage.env'


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: cluster file not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return config


def check(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's prepare_config + validate_config (its JSON schema and node-type checks), as
    `ray up` runs them; returns the prepared config. UserError with Ray's first line."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except Exception as e:  # noqa: BLE001 - Ray raises ValueError, jsonschema errors, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cluster file rejected by Ray: {first[:300]}") from None
    return prepared


def storage_of(config: dict[str, Any]) -> str | None:
    """The HIVG_STORAGE the file's initialization_commands give every node."""
    for command in config.get("initialization_commands") or []:
        found = re.search(r"HIVG_STORAGE=(\S+?)[\"']? >", command)
        if found:
            return found.group(1)
    return None


def with_cpus(command: str, cpus: int) -> str:
    """`ray start ...` with a fixed CPU count (local machines: what Ray may use)."""
    if re.match(r"^\s*ray start\b", command) and "--num-cpus" not in command:
        return f"{command} --num-cpus={cpus}"
    return command


def local_config(aws: dict[str, Any], *, head_ip: str, worker_ips: list[str], ssh_user: str,
                 ssh_private_key: str, storage: str, head_cpus: int = 0,
                 worker_cpus: int | None = None, cluster_name: str | None = None
                 ) -> dict[str, Any]:
    """A cluster file for Ray's `local` provider running `aws`'s setup and start commands:
    the same file mounts, setup and start commands, with each host's CPU count in its
    `ray start` (`worker_cpus` None: what Ray detects)."""
    local = {
        "cluster_name": cluster_name or f"{aws.get('cluster_name', 'hivg')}-local",
        "provider": {"type": "local", "head_ip": head_ip, "worker_ips": list(worker_ips)},
        "auth": {"ssh_user": ssh_user, "ssh_private_key": ssh_private_key},
        "initialization_commands": [STORAGE_ENV_COMMAND.format(storage=storage)],
    }
    for key in SHARED_KEYS:
        if key in aws:
            local[key] = copy.deepcopy(aws[key])
    local["head_start_ray_commands"] = [with_cpus(c, head_cpus)
                                        for c in local.get("head_start_ray_commands", [])]
    if worker_cpus is not None:
        local["worker_start_ray_commands"] = [with_cpus(c, worker_cpus) for c in
                                              local.get("worker_start_ray_commands", [])]
    return local


def dump(config: dict[str, Any], header: str = "") -> str:
    return header + yaml.safe_dump(config, sort_keys=False, width=100)


# -- reaching the cluster ---------------------------------------------------------------
def ssh_base(path: str | Path) -> list[str]:
    """`ssh ... user@head` for a running cluster, with the key and user Ray uses."""
    from ray.autoscaler._private.commands import _bootstrap_config, get_head_node_ip

    config = _bootstrap_config(load(path))  # cached by `ray up`; no cloud call then
    head = get_head_node_ip(str(path))
    auth = config["auth"]
    command = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
               "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15"]
    if auth.get("ssh_private_key"):
        command += ["-i", str(Path(auth["ssh_private_key"]).expanduser())]
    return command + [f"{auth['ssh_user']}@{head}"]


def forward_command(path: str | Path, dashboard_port: int = DASHBOARD_PORT,
                    mlflow_port: int = 5000) -> tuple[list[str], str]:
    """(the ssh command that forwards the dashboard and the MLflow UI to this machine, the
    head's MLflow address). MLflow listens on the head's private address only, so Ray's
    own port-forwarding (to the head's localhost) cannot reach it; ssh -L can."""
    base = ssh_base(path)
    result = subprocess.run(base + [f"cat {MLFLOW_ENV}"], capture_output=True, text=True,
                            timeout=60)
    found = re.search(r"MLFLOW_TRACKING_URI=http://([^\s:/]+):(\d+)", result.stdout)
    if result.returncode != 0 or not found:
        raise UserError(f"{path}: no MLflow server on the head ({MLFLOW_ENV} missing: is the "
                        "cluster up? `ray up` starts it)")
    ip, port = found.group(1), found.group(2)
    command = base[:-1] + ["-N", "-L", f"{dashboard_port}:127.0.0.1:{DASHBOARD_PORT}",
                           "-L", f"{mlflow_port}:{ip}:{port}", base[-1]]
    return command, f"http://{ip}:{port}"


# -- the lock -----------------------------------------------------------------------------
def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_requirements(project: str = "hivg", extras: tuple[str, ...] = ("cluster",)
                        ) -> list[str]:
    """`name==version` for every installed distribution `project[extras]` needs on this
    platform (the closure of its requirements, markers evaluated), sorted by name."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = default_environment()
    found: dict[str, tuple[str, str]] = {}

    def visit(name: str, wanted: tuple[str, ...]) -> None:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise UserError(f"{name} is not installed: install {project}[{','.join(extras)}] "
                            "first, then lock") from None
        found.setdefault(_norm(name), (dist.metadata["Name"], dist.version))
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(
                    req.marker.evaluate({**env, "extra": e}) for e in ("", *wanted)):
                continue
            if _norm(req.name) not in found or req.extras:
                visit(req.name, tuple(req.extras))

    visit(project, extras)
    found.pop(_norm(project))
    return [f"{n}=={v}" for n, v in sorted(found.values(), key=lambda nv: _norm(nv[0]))]


def read_constraints(path: str | Path) -> dict[str, str]:
    """{normalised name: version} of a constraints file's `name==version` lines."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_norm(name)] = version.strip()
    return pins


__all__ = ["load", "check", "local_config", "dump", "forward_command", "ssh_base",
           "locked_requirements", "read_constraints", "storage_of", "with_cpus"]
