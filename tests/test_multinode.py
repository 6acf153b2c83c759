"""check_shared_storage on a real two-node Ray cluster on this machine.

Two `ray start --block` processes (a head and a second node joining it), each in its own
process group and stopped by its PID. What makes "not shared" real on one machine: the
second node runs in its own mount namespace (`unshare -m`, root only) with an empty tmpfs
mounted over the storage folder, so its tasks see an empty folder where the driver and the
head see the marker file, exactly as a node with another disk would. Without the
privilege to do that, the refusal test is skipped with its reason.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("ray")

from tools.processes import free_port, stop_process_group  # noqa: E402

REPO = Path(__file__).resolve().parents[1]



def _node_ip() -> str:
    """The address `ray start` picks for this machine (its GCS listens there)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def _can_private_mount(tmp: Path) -> str | None:
    """None when `unshare -m` + a tmpfs mount works here, else why not."""
    target = tmp / "mount-probe"
    target.mkdir()
    try:
        result = subprocess.run(["unshare", "-m", "sh", "-c",
                                 f"mount -t tmpfs none '{target}' && touch '{target}/x'"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare unavailable: {e}"
    if result.returncode != 0:
        return f"cannot mount in a private namespace: {result.stderr.strip()[:200]}"
    return None if not (target / "x").exists() else "the mount leaked out of its namespace"


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    code = ("import ray; ray.init(address=%r, log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))" % address)
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env=env, timeout=30)
    except subprocess.TimeoutExpired:
        return 0
    return int(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else 0


@contextlib.contextmanager
def two_node_cluster(tmp: Path, head_env: dict[str, str], node_env: dict[str, str],
                     private_tmpfs: Path | None = None) -> Iterator[str]:
    """Yield the address of a head + one more node (1 CPU each). `private_tmpfs`: a folder
    the second node sees as an empty tmpfs (its own mount namespace)."""
    port = free_port()
    address = f"{_node_ip()}:{port}"
    common = ["--num-cpus=1", "--disable-usage-stats", "--block"]
    logs = tmp / "ray-logs"
    logs.mkdir(exist_ok=True)
    # Short: Ray's socket paths under it must stay within AF_UNIX's 107 bytes.
    ray_tmp = Path(tempfile.mkdtemp(prefix="hivg-ray-", dir="/tmp"))
    processes: list[subprocess.Popen] = []
    try:
        with open(logs / "head.log", "w") as out:
            processes.append(subprocess.Popen(
                ["ray", "start", "--head", f"--port={port}", f"--temp-dir={ray_tmp}",
                 "--include-dashboard=false", *common],
                env=head_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.time() + 90
        while processes[0].poll() is None and _alive_nodes(address, head_env) < 1:
            if time.time() > deadline:
                raise RuntimeError(f"head did not start: {(logs / 'head.log').read_text()[-2000:]}")
            time.sleep(1)
        join = ["ray", "start", f"--address={address}", *common]
        if private_tmpfs is not None:
            join = ["unshare", "-m", "sh", "-c",
                    f"mount -t tmpfs none '{private_tmpfs}' && exec \"$@\"", "sh", *join]
        with open(logs / "node.log", "w") as out:
            processes.append(subprocess.Popen(join, env=node_env, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        while processes[1].poll() is None and _alive_nodes(address, head_env) < 2:
            if time.time() > deadline:
                raise RuntimeError(f"node did not join: {(logs / 'node.log').read_text()[-2000:]}")
            time.sleep(1)
        if any(p.poll() is not None for p in processes):
            raise RuntimeError(f"a node exited: {(logs / 'head.log').read_text()[-1500:]}"
                               f"{(logs / 'node.log').read_text()[-1500:]}")
        yield address
    finally:
        for process in reversed(processes):
            stop_process_group(process, wait_s=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    # No token auth between the test's own processes (Ray 2.60 turns it on for `ray start`).
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled",
            **extra}


def check_storage(address: str, storage: str, env: dict[str, str]) -> dict:
    """check_shared_storage from a driver process of its own (the test process may hold
    the session's local Ray)."""
    code = ("import json, ray\n"
            "from hivg.errors import UserError\n"
            "from hivg.orchestration.ray_train import check_shared_storage\n"
            f"ray.init(address={address!r}, log_to_driver=False)\n"
            "nodes = sum(1 for n in ray.nodes() if n['Alive'])\n"
            "try:\n"
            f"    check_shared_storage({storage!r}); print(json.dumps({{'nodes': nodes}}))\n"
            "except UserError as e:\n"
            "    print(json.dumps({'nodes': nodes, 'error': str(e)}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_folder_one_node_cannot_see_is_refused_and_a_shared_one_accepted(tmp_path):
    reason = _can_private_mount(tmp_path)
    if reason:
        pytest.skip(reason)
    shared, private = tmp_path / "shared-runs", tmp_path / "node-local-runs"
    shared.mkdir()
    private.mkdir()
    env = base_env()
    with two_node_cluster(tmp_path, env, env, private_tmpfs=private) as address:
        assert check_storage(address, str(shared), env) == {"nodes": 2}
        refused = check_storage(address, str(private), env)
        assert refused["nodes"] == 2
        assert re.fullmatch(rf"--storage {re.escape(str(private))}: not shared: node\(s\) "
                            r"[0-9.]+ \([0-9a-f]{8}\) cannot see it; use a path every "
                            r"node mounts \(or s3://\)", refused["error"]), refused["error"]
        assert "\n" not in refused["error"]
        # S3 storage is shared by construction: accepted without any marker.
        assert check_storage(address, "s3://bucket/runs", env) == {"nodes": 2}
    assert not list(shared.iterdir()) and not list(private.iterdir())  # markers cleaned up
