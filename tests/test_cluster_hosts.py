"""The cluster flow on three real hosts of this machine (tests/cluster_hosts.py): `ray up`
of cluster.yaml's own setup and start commands over SSH, studies submitted as Ray Jobs
through the port-forward a user opens, a trial's DDP across two hosts, the loss of a worker
host mid-study, no secret written anywhere, and `ray down`. Root only (namespaces); S3 is
moto_server on the test network, which every host reaches."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("moto")

from cluster_flow import (LEFTOVER_PATTERN, LocalCluster, mlflow_runs,  # noqa: E402
                          run_with_host_loss, study_text, trial_folders)
from cluster_hosts import missing_requirements  # noqa: E402
from s3_server import SECRET_KEY  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(missing_requirements() is not None,
                                 reason=missing_requirements() or "")]
MEASURED: dict = {}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as c:
        MEASURED["ray_up_s"] = round(c.up(), 1)
        MEASURED["nodes_after_up_s"] = round(c.wait_for_nodes(3), 1)
        c.forward()
        yield c
    print(f"\ncluster flow measured: {json.dumps(MEASURED)}")


def test_ray_up_brings_up_the_head_with_mlflow_and_both_workers(cluster):
    nodes = {n["ip"]: n["cpus"] for n in cluster.alive_nodes()}
    assert nodes == {cluster.head.ip: 0, **{w.ip: 3 for w in cluster.workers}}
    # Every node installed this project from its synced copy, with the pinned Ray.
    for host in [cluster.head, *cluster.workers]:
        out = host.run("python -P -c 'import hivg, ray; print(hivg.__file__, ray.__version__)'")
        path, version = out.stdout.split()
        assert path == "/home/hivg/hivg/hivg/__init__.py" and version == __import__("ray").__version__
        assert host.run("echo $RAY_AUTH_MODE $HIVG_STORAGE").stdout.split() == \
            ["token", cluster.storage]
    # MLflow on the head's private address only, reached here through the port-forward.
    uri = cluster.head.run("cat ~/.hivg/mlflow.env").stdout.strip()
    assert uri == f"export MLFLOW_TRACKING_URI=http://{cluster.head.ip}:5000"
    listening = cluster.head.run("ss -ltnH 'sport = :5000' 2>/dev/null || netstat -ltn").stdout
    assert f"{cluster.head.ip}:5000" in listening and "127.0.0.1:5000" not in listening


def test_a_trial_trains_ddp_across_two_hosts_and_matches_one_process(cluster, tmp_path):
    """One trial on 2 Ray Train workers of 2 CPUs each: on hosts of 3 CPUs (and a head of
    none) they can only sit on two different hosts. gloo over the test network; the
    2-worker evaluation equals a single-process evaluation of the same checkpoint."""
    text = study_text("across-hosts", workers=2, cpus_per_worker=2, train=96, epochs=(1, 1),
                      batch=8)
    job = cluster.submit(["python", "pipelines/ablate.py",
                          cluster.put_file("across-hosts.yaml", text)])
    status, log = cluster.wait(job, timeout=900)
    assert status == "SUCCEEDED", log[-4000:]
    placed = cluster.head.run(
        "python -c \"import ray, json; from ray.util.state import list_actors; "
        "ray.init(address='auto', log_to_driver=False); "
        "ip = {n['NodeID']: n['NodeManagerAddress'] for n in ray.nodes()}; "
        "print(json.dumps([ip[a.node_id] for a in list_actors(detail=True, limit=1000) "
        "if a.class_name == 'RayTrainWorker']))\" 2>/dev/null")
    hosts = json.loads(placed.stdout.strip().splitlines()[-1])
    assert sorted(hosts) == sorted(w.ip for w in cluster.workers), placed.stdout
    (files,) = trial_folders(cluster, "across-hosts").values()
    summary = json.loads(files["summary.json"])
    assert summary["world_size"] == 2 and summary["global_batch"] == 16

    # The same checkpoint, evaluated in one process here (from the bucket).
    client = cluster.s3.client()
    trial = next(iter(trial_folders(cluster, "across-hosts")))
    best = tmp_path / "best.pt"
    client.download_file(cluster.bucket, f"hivg/across-hosts/trials/{trial}/checkpoints/best.pt",
                         str(best))
    data = tmp_path / "data"
    keys = [obj["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=cluster.bucket, Prefix="hivg/data/synthetic") for obj in page.get("Contents", [])]
    for key in keys:
        if key.endswith("/") or any(k.startswith(key + "/") for k in keys):
            continue  # a folder marker (pyarrow writes them)
        target = data / key[len("hivg/data/"):]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(cluster.bucket, key, str(target))
    from hivg.train.inference import evaluate_checkpoint

    single = evaluate_checkpoint(best, "synthetic", data, ["val", "test"], tmp_path / "eval",
                                 device="cpu", max_samples=40)
    for split in ("val", "test"):
        assert summary["splits"][split]["count"] == single[split]["count"] == 40
        assert single[split]["acc50"] == pytest.approx(summary[f"{split}/acc50"], abs=1e-9)


def test_a_study_survives_the_loss_of_a_worker_host(cluster):
    """Four trials, two at a time; the host running one is killed (every process of it at
    once) after that trial's first epoch reached the bucket. The study finishes on the other
    host: every trial accounted for, the interrupted one resumed from its last epoch."""
    text = study_text("host-loss", workers=0, cpus_per_worker=1, train=240, epochs=(3, 1),
                      variants={"baseline": {}, "no-bridge": {"model.bridge.enabled": False}},
                      seeds=(13, 14))
    out = run_with_host_loss(cluster, "host-loss", text)
    assert out["status"] == "SUCCEEDED", out["log"][-4000:]
    survivor = next(w for w in cluster.workers if w is not out["host"])
    MEASURED["seconds_from_host_loss_to_resumed_trial"] = out["seconds_to_resume"]

    folders = trial_folders(cluster, "host-loss")
    assert len(folders) == 4 and all("summary.json" in f for f in folders.values())
    for trial in out["interrupted"]:
        assert out["seconds_to_resume"][trial] is not None, f"{trial} never resumed"
        rows = [json.loads(r) for r in folders[trial]["metrics.jsonl"].splitlines()]
        keys = [(r["stage"], r["epoch"]) for r in rows]
        assert keys == [("stage0", 0), ("stage0", 1), ("stage0", 2), ("stage0", 3),
                        ("stage1", 0), ("stage1", 1)]  # each epoch once, none lost
    assert re.search(r"resuming \S+ at stage\d after epoch [1-3]", out["log"])

    runs = mlflow_runs(cluster, "host-loss")
    children = [r for r in runs if r.data.tags.get("trial_key")]
    parents = [r for r in runs if not r.data.tags.get("trial_key")]
    assert len(children) == 4 and len(parents) == 1
    assert all(r.info.status == "FINISHED" for r in runs)
    worker_names = {w.name for w in cluster.workers}
    assert {r.data.tags["host"] for r in children} <= worker_names  # logged from the workers
    for trial in out["interrupted"]:
        (child,) = [r for r in children if r.data.tags["trial_key"].replace("/", "_") == trial]
        assert child.data.tags["host"] == survivor.name  # the same run, continued there
    results = json.loads(cluster.s3.client().get_object(
        Bucket=cluster.bucket, Key="hivg/host-loss/results.json")["Body"].read())
    assert len(results["trials"]) == 4 and not results["failed_trials"]


def test_no_secret_is_written_or_printed(cluster):
    """The Ray token and the hosts' AWS secret: 0 times in Ray's session logs (every host),
    the jobs' logs, ray up's output, the MLflow database and server log, and the bucket."""
    secrets = {"ray token": cluster.token.encode(), "aws secret": SECRET_KEY.encode()}
    places: list[Path] = [p for p in cluster.workdir.rglob("*") if p.is_file()
                          and "laptop" not in p.parts]
    for host in [cluster.head, *cluster.workers]:
        places += [p for p in (host.tmp / "ray").rglob("*") if p.is_file()]
    places += [p for p in (cluster.head.home / "mlflow").rglob("*") if p.is_file()]
    assert len(places) > 50
    found = {name: [str(p) for p in places if value in p.read_bytes()]
             for name, value in secrets.items()}
    client = cluster.s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=cluster.bucket):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=cluster.bucket, Key=obj["Key"])["Body"].read()
            for name, value in secrets.items():
                if value in body:
                    found[name].append(f"s3://{cluster.bucket}/{obj['Key']}")
    assert found == {"ray token": [], "aws secret": []}


def test_ray_down_stops_everything_and_the_test_removes_what_it_made(cluster):
    MEASURED["ray_down_s"] = round(cluster.down(), 1)
    for host in [cluster.head, *cluster.workers]:
        if host.alive:  # PID 1 and sshd only: no Ray, no MLflow
            left = host.run("ps -eo comm= | sort | uniq").stdout.split()
            assert set(left) <= {"python", "sshd", "ps", "sort", "uniq", "bash"}, left
            assert not host.run(f"pgrep -f '{LEFTOVER_PATTERN}' || true").stdout.strip()
    net = cluster.net
    cluster.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"hivg-{net.id}" not in names and net.bridge not in links and f"hv{net.id}" not in links
    assert not net.base.exists()
    assert all(h.process.poll() is not None for h in net.hosts)
