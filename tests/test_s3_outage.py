"""S3 outages ridden out: a real moto_server paused (SIGSTOP) in the middle of a run folder's
push, then resumed (SIGCONT). Short budgets and pauses keep it fast; moto is never restarted
(its state is in memory)."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from hivg.orchestration.remote_storage import (RETRY_BUDGET_ENV, RemoteStorage, RunFolderSync,
                                               S3OutageError)

pytest_plugins = ["s3_server"]  # the s3 and s3_server fixtures
FILES = {"config.yaml": b"seed: 13\n", "metrics.jsonl": b'{"epoch": 1}\n',
         "predictions/val.parquet": b"p" * 2048, "checkpoints/last.pt": b"w" * 4096,
         "summary.json": b'{"test/acc50": 0.5}'}


@pytest.fixture
def run_folder(s3, monkeypatch) -> RunFolderSync:
    """A run folder in the mirror, to be pushed; requests stall out after 1 s."""
    monkeypatch.setenv("HIVG_S3_REQUEST_TIMEOUT_S", "1")
    sync = RunFolderSync(RemoteStorage(f"s3://{s3.bucket}/runs"), "r1")
    for rel, data in FILES.items():
        (sync.local / rel).parent.mkdir(parents=True, exist_ok=True)
        (sync.local / rel).write_bytes(data)
    return sync


def pause_after_first_upload(sync: RunFolderSync, pid: int, pause_s: float) -> None:
    """The server stops as soon as the push's first file reached it, for `pause_s`."""
    storage, upload = sync.storage, sync.storage.upload
    state = {"paused": False}

    def upload_then_pause(local: Path, rel: str) -> None:
        upload(local, rel)
        if not state["paused"]:
            state["paused"] = True
            os.kill(pid, signal.SIGSTOP)
            threading.Timer(pause_s, os.kill, (pid, signal.SIGCONT)).start()

    storage.upload = upload_then_pause


def assert_pushed(s3, sync: RunFolderSync) -> None:
    for rel, data in FILES.items():
        assert s3.read(f"runs/{sync.name}/{rel}") == data, rel
    manifest = json.loads(s3.read(f"runs/{sync.name}/.hivg-sync.json"))
    assert sorted(manifest["files"]) == sorted(FILES)


def test_a_push_paused_after_its_first_file_completes_and_loses_nothing(
        s3, s3_server, run_folder, monkeypatch):
    """A server that hangs mid-push (uploads with a body wait for it): the push goes on
    when it continues."""
    monkeypatch.setenv(RETRY_BUDGET_ENV, "60")
    pause_after_first_upload(run_folder, s3_server.process.pid, pause_s=3)
    start = time.monotonic()
    try:
        assert run_folder.push() == len(FILES)
    finally:
        os.kill(s3_server.process.pid, signal.SIGCONT)
    assert time.monotonic() - start >= 3  # the push did wait out the pause
    assert_pushed(s3, run_folder)


def test_a_push_rides_out_an_outage_with_one_line_at_its_start_and_end(
        s3, s3_server, run_folder, monkeypatch):
    """The server is down when the push starts (its first request times out) and back 12 s
    later (well past the S3 client's own 3 attempts of 1 s each): retried with backoff, one
    line each way, everything in the bucket."""
    monkeypatch.setenv(RETRY_BUDGET_ENV, "60")
    messages: list[str] = []
    run_folder.storage.log = messages.append
    pid = s3_server.process.pid
    os.kill(pid, signal.SIGSTOP)
    threading.Timer(12, os.kill, (pid, signal.SIGCONT)).start()
    try:
        assert run_folder.push() == len(FILES)
    finally:
        time.sleep(0.1)
        os.kill(pid, signal.SIGCONT)
    assert_pushed(s3, run_folder)
    assert len(messages) == 2, messages
    assert messages[0].startswith("S3 outage: reading r1/.hivg-sync.json") and \
        messages[0].endswith("retrying for up to 60s"), messages
    assert messages[1].startswith("S3 back after"), messages


def test_an_outage_past_the_budget_stops_in_one_line_and_a_later_push_completes(
        s3, s3_server, run_folder, monkeypatch):
    monkeypatch.setenv(RETRY_BUDGET_ENV, "2")
    messages: list[str] = []
    run_folder.storage.log = messages.append
    os.kill(s3_server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(S3OutageError) as error:
            run_folder.push()
    finally:
        os.kill(s3_server.process.pid, signal.SIGCONT)
    text = str(error.value)
    assert "\n" not in text and "past the retry budget" in text and RETRY_BUDGET_ENV in text
    assert len(messages) == 1 and messages[0].startswith("S3 outage:"), messages
    run_folder.push()  # the server is back: nothing was lost
    assert_pushed(s3, run_folder)
