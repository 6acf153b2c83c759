"""Processes the tests and tools start: a free port, stopping a process group by its id
(never by name), so a server's worker processes go with it, and killing what a SIGKILLed
driver left behind under its own temp folder."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    """A port nothing listens on right now (also what an 'unreachable' URI can use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(process: subprocess.Popen, wait_s: float = 15.0) -> None:
    """SIGTERM the process's group, then SIGKILL if it is still there after `wait_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def kill_processes_naming(folder: Path) -> int:
    """SIGKILL every process whose command line names `folder` (a Ray started with its own
    temp dir names it on each of its processes; a SIGKILLed driver leaves them behind).
    Returns how many were signalled."""
    import psutil

    killed = 0
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.info["pid"] != os.getpid() and any(
                str(folder) in part for part in (p.info["cmdline"] or [])):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.info["pid"], signal.SIGKILL)
                killed += 1
    return killed
