"""`--storage s3://bucket/prefix` against a real S3 endpoint (moto_server on 127.0.0.1):
the run folder reaches the bucket after every epoch and at the end, a run resumes from the
bucket alone, the stage cache is shared through the bucket (marker last), bad URIs fail in
one line, and no credential is ever written."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from s3_server import ACCESS_KEY, SECRET_KEY
from hivg.orchestration.remote_stage_cache import stage_cache_for
from hivg.orchestration.run import TrackingOptions, run_training
from test_train import Interrupt, StopAfter, tiny_config

pytest_plugins = ["s3_server"]  # the s3 and s3_server fixtures
REPO = Path(__file__).resolve().parents[1]
NO_MLFLOW = TrackingOptions(enabled=False)


def train(config, uri: str, name: str, log, **kwargs) -> dict:
    from hivg.orchestration.remote_storage import RemoteStorage

    mirror = RemoteStorage(uri).mirror
    return run_training(config, uri, mirror / name, tracking=NO_MLFLOW, show_progress=False,
                        log=log, stage_cache=stage_cache_for(uri, log=log), **kwargs)


def bucket_rows(s3, key: str) -> list[tuple[str, int]]:
    lines = s3.read(key).decode().splitlines()
    return [(r["stage"], r["epoch"]) for r in map(json.loads, lines)]


def test_a_run_reaches_the_bucket_every_epoch_and_resumes_from_it_alone(
        s3, synthetic_storage, tmp_path):
    uri = f"s3://{s3.bucket}/team/runs"
    config = tiny_config(synthetic_storage / "data", epochs=(1, 1, 0), batch=16)
    messages: list[str] = []

    # Killed right after the report of stage0 epoch 1: that epoch is already in the bucket.
    with pytest.raises(Interrupt):
        train(config, uri, "r1", messages.append, hooks=StopAfter(stop_at=(0, 1)))
    keys = s3.keys("team/runs/r1/")
    assert {"team/runs/r1/config.yaml", "team/runs/r1/metrics.jsonl",
            "team/runs/r1/checkpoints/last.pt",
            "team/runs/r1/checkpoints/stage0_best.pt"} <= set(keys)
    assert "team/runs/r1/summary.json" not in keys
    assert bucket_rows(s3, "team/runs/r1/metrics.jsonl") == [("stage0", 0), ("stage0", 1)]

    # The local mirror is gone (another machine, a wiped cache): resume from the bucket.
    shutil.rmtree(s3.mirror)
    summary = train(config, uri, "r1", messages.append, resume=True)
    assert any("resuming r1 at stage0 after epoch 1" in m for m in messages)
    assert bucket_rows(s3, "team/runs/r1/metrics.jsonl") == [
        ("stage0", 0), ("stage0", 1), ("stage1", 0), ("stage1", 1), ("stage2", 0)]
    keys = set(s3.keys("team/runs/r1/"))
    for rel in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/best.pt",
                "checkpoints/last.pt", "checkpoints/stage1_best.pt",
                "predictions/val.parquet", "predictions/test.parquet"):
        assert f"team/runs/r1/{rel}" in keys, rel
    remote_summary = json.loads(s3.read("team/runs/r1/summary.json"))
    assert remote_summary["test/acc50"] == summary["test/acc50"]
    assert remote_summary["epochs_trained"] == 2
    # Each finished stage went to the shared stage cache, marker included.
    markers = [k for k in s3.keys("team/runs/stage-cache/") if k.endswith("/COMPLETE")]
    assert len(markers) == 3

    # No credential in anything written: the bucket, the mirror, the run folder.
    secrets = [ACCESS_KEY.encode(), SECRET_KEY.encode()]
    for key in s3.keys():
        body = s3.read(key)
        assert not any(s in body for s in secrets), key
    for path in s3.mirror.rglob("*"):
        if path.is_file():
            assert not any(s in path.read_bytes() for s in secrets), path


def test_the_stage_cache_is_shared_through_the_bucket_marker_last(
        s3, synthetic_storage, tmp_path, monkeypatch):
    uri = f"s3://{s3.bucket}/shared"
    config = tiny_config(synthetic_storage / "data", epochs=(1, 0, 0), batch=16)
    train(config, uri, "first", lambda _m: None)
    entries = {}
    for key in s3.keys("shared/stage-cache/"):
        if key.endswith("/info.json"):
            entries[json.loads(s3.read(key))["stage"]] = key.rsplit("/", 1)[0]
    assert sorted(entries) == ["stage0", "stage1", "stage2"]
    # stage1: its files are there but not its marker (a publisher that died before the
    # marker); stage2: a damaged checkpoint under a valid marker.
    s3.client.delete_object(Bucket=s3.bucket, Key=f"{entries['stage1']}/COMPLETE")
    s3.client.put_object(Bucket=s3.bucket, Key=f"{entries['stage2']}/best.pt", Body=b"torn")

    # Another machine: a fresh mirror, nothing local.
    monkeypatch.setenv("HIVG_MIRROR_DIR", str(tmp_path / "other-mirror"))
    messages: list[str] = []
    train(config, uri, "second", messages.append)
    reused = [m.split("]")[0].lstrip("[") for m in messages if "reused from the stage cache" in m]
    assert reused == ["stage0"]
    assert any(f"entry {entries['stage2'].rsplit('/', 1)[1]} on {uri} is invalid" in m
               for m in messages)
    # The second run published what it trained: every entry is whole again.
    markers = {k.rsplit("/", 2)[1] for k in s3.keys("shared/stage-cache/")
               if k.endswith("/COMPLETE")}
    assert markers == {e.rsplit("/", 1)[1] for e in entries.values()}


def pipeline(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "pipelines" / "train.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**env, "PYTHONPATH": str(REPO)})


def test_bad_s3_storage_fails_in_one_line_before_anything_starts(s3, tmp_path):
    env = dict(os.environ)
    closed = subprocess.run([sys.executable, "-c", "import socket; s=socket.socket(); "
                             "s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"],
                            capture_output=True, text=True).stdout.strip()
    no_keys = {k: v for k, v in env.items()
               if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    cases = [
        ("s3://", env, "no bucket (expected s3://BUCKET/PREFIX)"),
        ("s3:///runs", env, "no bucket"),
        ("s3://no-such-bucket/runs", env, "bucket 'no-such-bucket' does not exist"),
        (f"s3://{s3.bucket}/runs", {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}"},
         "cannot reach http://127.0.0.1:"),
        (f"s3://{s3.bucket}/runs", no_keys, "no AWS credentials in the environment"),
        ("gs://bucket/runs", env, "expected a folder or s3://BUCKET/PREFIX"),
    ]
    for uri, case_env, message in cases:
        result = pipeline("--storage", uri, "--no-mlflow", "model.weights=random", env=case_env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (uri, result.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith(f"error: --storage {uri}: "), lines
        assert message in lines[0], lines
        assert not any(s in result.stdout + result.stderr for s in (ACCESS_KEY, SECRET_KEY))
    assert not s3.mirror.exists()  # nothing was prepared or trained


@pytest.mark.slow
def test_a_two_worker_ray_run_keeps_its_run_folder_and_ray_state_in_the_bucket(
        s3, synthetic_storage):
    """Rank 0 pushes, the driver pulls summary.json from the bucket, Ray Train's own state
    goes to s3://.../.ray-train; the workers get S3 access from the environment alone."""
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="hivg-ray-", dir="/tmp")  # short: AF_UNIX path limit
    uri = f"s3://{s3.bucket}/cluster"
    try:
        result = subprocess.run(
            [sys.executable, str(REPO / "pipelines" / "train.py"), "--storage", uri,
             "--workers", "2", "--no-mlflow", "--quiet", "--name", "ddp",
             f"data.data_dir={synthetic_storage / 'data'}", "model.weights=random",
             "data.num_workers=0", "hilora.stages.stage0.epochs=1",
             "hilora.stages.stage1.epochs=0", "hilora.stages.stage2.epochs=0",
             "hilora.stages.stage0.batch_size=16"],
            capture_output=True, text=True, cwd=REPO, timeout=600,
            env={**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp})
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    keys = set(s3.keys("cluster/"))
    for rel in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/best.pt",
                "predictions/test.parquet"):
        assert f"cluster/ddp/{rel}" in keys, rel
    assert bucket_rows(s3, "cluster/ddp/metrics.jsonl") == [
        ("stage0", 0), ("stage0", 1), ("stage1", 0), ("stage2", 0)]
    summary = json.loads(s3.read("cluster/ddp/summary.json"))
    assert summary["world_size"] == 2
    assert f"{summary['test/acc50']:.4f}" in result.stdout  # the driver read the bucket's copy
    assert any(k.startswith("cluster/.ray-train/") for k in keys)
    secrets = [ACCESS_KEY.encode(), SECRET_KEY.encode()]
    for key in keys:
        assert not any(s in s3.read(key) for s in secrets), key


STUDY = """name: mini
base: tiny
datasets: [synthetic]
seeds: [13]
resources: {{workers: 0, cpus_per_worker: 1}}
overrides:
  data.data_dir: {data_dir}
  data.max_train_samples: 32
  data.max_eval_samples: 20
  data.num_workers: 0
  model.weights: random
  hilora.stages.stage0.epochs: 1
  hilora.stages.stage0.batch_size: 8
  hilora.stages.stage1.epochs: 0
  hilora.stages.stage2.epochs: 0
variants:
  baseline: {{}}
  no-bridge: {{model.bridge.enabled: false}}
"""


@pytest.mark.slow
def test_a_study_lives_in_the_bucket_and_resumes_from_it_on_a_fresh_machine(
        s3, synthetic_storage, tmp_path):
    """ablate.py --storage s3://...: Tune's state, every trial's run folder and the study's
    table reach the bucket; a second machine (an empty mirror) resumes from the bucket alone
    and retrains nothing."""
    import tempfile

    study = tmp_path / "mini.yaml"
    study.write_text(STUDY.format(data_dir=synthetic_storage / "data"))
    uri = f"s3://{s3.bucket}/studies"

    def ablate(mirror: Path, *flags: str) -> subprocess.CompletedProcess:
        ray_tmp = tempfile.mkdtemp(prefix="hivg-ray-", dir="/tmp")  # short: AF_UNIX path limit
        try:
            return subprocess.run(
                [sys.executable, str(REPO / "pipelines" / "ablate.py"), str(study),
                 "--storage", uri, "--no-mlflow", *flags],
                capture_output=True, text=True, cwd=tmp_path, timeout=600,
                env={**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp,
                     "HIVG_MIRROR_DIR": str(mirror)})
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)

    first = ablate(tmp_path / "machine-1")
    assert first.returncode == 0, first.stderr[-3000:]
    keys = set(s3.keys("studies/mini/"))
    trials = sorted({k.split("/")[3] for k in keys if k.startswith("studies/mini/trials/")})
    assert len(trials) == 2
    for trial in trials:
        for rel in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/best.pt",
                    "predictions/test.parquet"):
            assert f"studies/mini/trials/{trial}/{rel}" in keys, (trial, rel)
    for rel in ("study.yaml", "results.json", "table.md", "report/report.md"):
        assert f"studies/mini/{rel}" in keys, rel
    assert any(k.startswith("studies/mini/tune/grid/") for k in keys)  # Tune's own state
    assert "studies/mini/stage-cache" not in keys and any(
        k.startswith("studies/stage-cache/") for k in s3.keys("studies/"))
    results = json.loads(s3.read("studies/mini/results.json"))
    assert [r["variant"] for r in results["rows"]] == ["baseline", "no-bridge"]
    assert f"s3://{s3.bucket}/studies/mini" in first.stdout
    finished = {t: s3.read(f"studies/mini/trials/{t}/summary.json") for t in trials}

    second = ablate(tmp_path / "machine-2", "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    for t in trials:  # nothing retrained: the summaries are the same bytes
        assert s3.read(f"studies/mini/trials/{t}/summary.json") == finished[t], t
    again = json.loads(s3.read("studies/mini/results.json"))
    assert [r["test/acc50"] for r in again["rows"]] == [r["test/acc50"] for r in results["rows"]]
    assert (tmp_path / "machine-2" / s3.bucket / "studies" / "mini" / "report").is_dir()
    secrets = [ACCESS_KEY.encode(), SECRET_KEY.encode()]
    for key in s3.keys("studies/"):
        assert not any(s in s3.read(key) for s in secrets), key


def test_report_reads_a_study_on_s3_and_pushes_its_report(s3, tmp_path):
    """report.py --storage s3://...: the study is pulled into the mirror (the URI kept whole),
    the report written there and pushed beside the study."""
    from hivg.orchestration.study_report import report_study
    from test_report import make_variants_study

    made = tmp_path / "made"
    make_variants_study(made, seeds=(13, 14), n=100)
    for path in sorted(p for p in (made / "abl").rglob("*") if p.is_file()):
        s3.client.upload_file(str(path), s3.bucket,
                              f"studies/abl/{path.relative_to(made / 'abl').as_posix()}")
    out = report_study("abl", f"s3://{s3.bucket}/studies", mlflow=False, n_boot=200,
                       plots=False)
    assert out == s3.mirror / s3.bucket / "studies" / "abl" / "report"
    assert "studies/abl/report/report.md" in s3.keys("studies/abl/report/")


def test_a_push_copies_bytes_the_bucket_already_holds_instead_of_sending_them(s3):
    """best.pt is the last stage's best, byte for byte: copied within the bucket."""
    from hivg.orchestration.remote_storage import RemoteStorage, RunFolderSync

    sync = RunFolderSync(RemoteStorage(f"s3://{s3.bucket}/runs"), "r1")
    sent: list[str] = []
    upload = sync.storage.upload
    sync.storage.upload = lambda local, rel: (sent.append(rel), upload(local, rel))[1]
    weights = os.urandom(1 << 20)
    files = {"checkpoints/stage0_best.pt": weights, "checkpoints/best.pt": weights,
             "checkpoints/last.pt": os.urandom(1 << 20), "metrics.jsonl": b"{}\n"}
    for rel, data in files.items():
        (sync.local / rel).parent.mkdir(parents=True, exist_ok=True)
        (sync.local / rel).write_bytes(data)
    assert sync.push() == 4
    assert len([r for r in sent if r.endswith("best.pt")]) == 1, sent  # the twin was copied
    for rel, data in files.items():
        assert s3.read(f"runs/r1/{rel}") == data, rel

    # An epoch later the stage's best is the new last.pt's twin; best.pt changed on its own.
    sent.clear()
    (sync.local / "checkpoints/stage0_best.pt").write_bytes(files["checkpoints/last.pt"])
    (sync.local / "checkpoints/best.pt").write_bytes(b"other")
    assert sync.push() == 2
    assert sent == ["r1/checkpoints/best.pt"], sent
    assert s3.read("runs/r1/checkpoints/stage0_best.pt") == files["checkpoints/last.pt"]
    assert s3.read("runs/r1/checkpoints/best.pt") == b"other"
