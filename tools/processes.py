"""Processes the tests and tools start: a free port, and stopping a process group by its id
(never by name), so a server's worker processes go with it."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess


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
