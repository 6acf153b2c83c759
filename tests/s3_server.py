"""A real S3 endpoint for tests: `moto_server` on 127.0.0.1 (imported as `s3_server`: pytest
puts tests/ on the path).

    pytest_plugins = ["s3_server"]  # in the test module: the s3 and s3_server fixtures

    def test_x(s3): ...       # s3.url, s3.bucket, s3.client (boto3), s3.keys(prefix)

The fixture starts one server per module (its own process, stopped by PID) and, per test,
points the AWS environment at it (AWS_ENDPOINT_URL, test credentials, region) with a fresh
bucket and a fresh mirror folder (HIVG_MIRROR_DIR).

moto 5.2.1 answers CompleteMultipartUpload with a `CompleteMultipartUploadResponse` root
element instead of S3's `CompleteMultipartUploadResult` (getmoto/moto#10055), which Arrow's
S3 client rejects: every file above the part size (checkpoints) would fail to upload. So the
server runs through `python s3_server.py PORT`, which fixes that one element and then runs
moto's own `moto_server` entry point unchanged.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tools.processes import free_port, stop_process_group

# Distinctive values, so a test can look for them in everything written (they must not be).
# The secret is made per test session (kept in the environment for the processes the tests
# start): a literal here would be found in every copy of this file a job ships to a node.
ACCESS_KEY = "AKIAHIVGTESTACCESSKEY"
SECRET_KEY = os.environ.setdefault("HIVG_TEST_S3_SECRET",
                                   "hivg-test-secret-" + secrets.token_hex(12))
REGION = "us-east-1"
REPO = Path(__file__).resolve().parents[1]



@dataclass
class S3Server:
    url: str
    process: subprocess.Popen

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


@dataclass
class S3Bucket:
    server: S3Server
    bucket: str
    mirror: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def client(self):
        return self.server.client()

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                      Prefix=prefix)
        for page in pages:
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()


@contextlib.contextmanager
def running_s3_server(log: Path, host: str = "127.0.0.1") -> Iterator[S3Server]:
    """moto_server on `host` (loopback by default; a test network's own address for test
    hosts), in its own process group, stopped by its PID."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, __file__, str(port), host], stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
                                        # tools/ (free_port) from the repository root
                                        "PYTHONPATH": os.pathsep.join(filter(None, [
                                            str(REPO), os.environ.get("PYTHONPATH")]))})
    url = f"http://{host}:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield S3Server(url, process)
    finally:
        stop_process_group(process, wait_s=10)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    pytest.importorskip("moto")
    pytest.importorskip("boto3")
    with running_s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


def aws_env(url: str) -> dict[str, str]:
    """The environment a node with access to the test endpoint has."""
    return {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path) -> S3Bucket:
    """A fresh bucket, the AWS environment pointing at it, a fresh mirror folder."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in aws_env(s3_server.url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    mirror = tmp_path / "mirror"
    monkeypatch.setenv("HIVG_MIRROR_DIR", str(mirror))
    bucket = f"hivg-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    return S3Bucket(s3_server, bucket, mirror)


def _patch_moto() -> None:
    from moto.s3.responses import S3Response

    original = S3Response._key_response_post

    def key_response_post(self, *args: Any, **kwargs: Any):
        status, headers, body = original(self, *args, **kwargs)
        if isinstance(body, (bytes, str)):
            wrong, right = "CompleteMultipartUploadResponse", "CompleteMultipartUploadResult"
            body = body.replace(wrong.encode(), right.encode()) if isinstance(body, bytes) \
                else body.replace(wrong, right)
        return status, headers, body

    S3Response._key_response_post = key_response_post


if __name__ == "__main__":
    _patch_moto()
    from moto.server import main

    main(["-H", sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1", "-p", sys.argv[1]])
