"""The project's cluster flow on real hosts of this machine (imported as `cluster_flow`).

`LocalCluster` makes a head and worker hosts (tests/cluster_hosts.py), an S3 endpoint they
all reach (moto_server on the test network's own address; the hosts' environment holds
its address and test credentials, as an instance role would), a wheelhouse for pip (the
hosts reach no package index: PIP_FIND_LINKS + PIP_NO_INDEX in their environment), a
"laptop" HOME with a Ray token, and `cluster-local.yaml` generated from `cluster.yaml`.
Then the user's commands, for real: `ray up`, `pipelines/cluster.py forward`, `ray job
submit`, `ray down`.

    with LocalCluster(tmp) as c:
        c.up(); c.wait_for_nodes(3)
        job = c.submit(["python", "pipelines/ablate.py", c.put_file("study.yaml", text)])
        c.wait(job)

Also a script that measures the flow (issue notes): `python tests/cluster_flow.py`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tools/

from cluster_hosts import HOST_HOME, HOST_SYSTEM, TestNetwork, missing_requirements  # noqa: E402
from s3_server import ACCESS_KEY, REGION, SECRET_KEY, running_s3_server  # noqa: E402

from tools.processes import free_port, stop_process_group  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


# Ray's and MLflow's processes (bracketed so a shell running pgrep never matches itself).
LEFTOVER_PATTERN = "[r]aylet|[g]cs_server|[m]lflow"


class LocalCluster:
    """A head and `workers` worker hosts, brought up from cluster.yaml's commands."""

    def __init__(self, workdir: Path, workers: int = 2, worker_cpus: int = 3,
                 log=print) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.n_workers, self.worker_cpus, self.log = workers, worker_cpus, log
        self.bucket = f"hivg-{uuid.uuid4().hex[:10]}"
        self.storage = f"s3://{self.bucket}/hivg"
        self.laptop = self.workdir / "laptop"
        self.config = self.workdir / "cluster-local.yaml"
        self.net: TestNetwork | None = None
        self._s3_cm = None
        self.s3 = None
        self.head = None
        self.workers = []
        self._forward: subprocess.Popen | None = None
        self.dashboard = self.mlflow_url = None
        self.is_up = False
        self.token = ""

    # -- making it ---------------------------------------------------------------------------
    def __enter__(self) -> "LocalCluster":
        reason = missing_requirements()
        if reason:
            raise RuntimeError(reason)
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _make(self) -> None:
        self.net = TestNetwork().__enter__()
        self._s3_cm = running_s3_server(self.workdir / "moto.log", host=self.net.gateway)
        self.s3 = self._s3_cm.__enter__()
        self.s3.client().create_bucket(Bucket=self.bucket)
        wheelhouse = self.net.base / "wheelhouse"
        # The build requirements of `pip install -e .`, from whatever index this machine has.
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(wheelhouse),
                        "setuptools>=68", "wheel"], check=True, capture_output=True)
        self.net.system_files.append(wheelhouse)
        # The hosts' S3 credentials sit in a file outside their HOME and out of every
        # process's environment, as an instance role's are on AWS (Ray logs runtime
        # environments; a key in the environment could be written there).
        credentials = self.net.base / "aws-credentials"
        credentials.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\n"
                               f"aws_secret_access_key = {SECRET_KEY}\n")
        credentials.chmod(0o600)
        self.net.system_files.append(credentials)
        self.net.env.update({
            "PIP_FIND_LINKS": f"{HOST_SYSTEM}/wheelhouse", "PIP_NO_INDEX": "1",
            "AWS_ENDPOINT_URL": self.s3.url,
            "AWS_SHARED_CREDENTIALS_FILE": f"{HOST_SYSTEM}/aws-credentials",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            # The hosts share this machine's hostname resolution otherwise; gloo must
            # announce the test network's address.
            "GLOO_SOCKET_IFNAME": "eth0"})
        self.head = self.net.add_host("hivg-head")
        self.workers = [self.net.add_host(f"hivg-w{i + 1}") for i in range(self.n_workers)]
        self.laptop.mkdir(exist_ok=True)
        subprocess.run([_ray(), "get-auth-token", "--generate"], env=self.env(), check=True,
                       capture_output=True)
        self.token = (self.laptop / ".ray" / "auth_token").read_text().strip()
        subprocess.run([sys.executable, str(REPO / "pipelines" / "cluster.py"), "local",
                        "--head-ip", self.head.ip,
                        *[a for w in self.workers for a in ("--worker-ip", w.ip)],
                        "--ssh-user", "root", "--ssh-key", str(self.net.key),
                        "--storage", self.storage, "--worker-cpus", str(self.worker_cpus),
                        "-o", str(self.config)], check=True, capture_output=True, cwd=REPO)

    def env(self, **extra: str) -> dict[str, str]:
        """The laptop's environment for Ray's CLI: its HOME (token, cluster state), token
        authentication, and autoscaler v1 (v2 starts one local worker too few)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        return {**env, "HOME": str(self.laptop), "RAY_AUTH_MODE": "token",
                "RAY_UP_enable_autoscaler_v2": "0", "PYTHONUNBUFFERED": "1", **extra}

    def _ray_cli(self, *args: str, timeout: float = 900, log_name: str | None = None
                 ) -> subprocess.CompletedProcess:
        result = subprocess.run([_ray(), *args], cwd=REPO, env=self.env(), capture_output=True,
                                text=True, timeout=timeout)
        if log_name:
            (self.workdir / log_name).write_text(result.stdout + result.stderr)
        return result

    # -- the user's commands -----------------------------------------------------------------
    def up(self) -> float:
        """`ray up -y cluster-local.yaml`; its wall seconds."""
        start = time.time()
        result = self._ray_cli("up", "-y", str(self.config), log_name="ray-up.log")
        if result.returncode != 0:
            raise RuntimeError(f"ray up failed ({result.returncode}): "
                               f"{(result.stdout + result.stderr)[-3000:]}")
        self.is_up = True
        return time.time() - start

    def alive_nodes(self) -> list[dict]:
        """Ray's alive nodes, as the head sees them."""
        code = ("import json, ray; ray.init(address='auto', log_to_driver=False); "
                "print(json.dumps([{'ip': n['NodeManagerAddress'], 'cpus': "
                "n['Resources'].get('CPU', 0)} for n in ray.nodes() if n['Alive']]))")
        result = self.head.run(f"python -c \"{code}\" 2>/dev/null", timeout=60)
        try:
            return json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return []

    def wait_for_nodes(self, count: int, timeout: float = 300) -> float:
        start = time.time()
        while len(self.alive_nodes()) < count:
            if time.time() - start > timeout:
                raise RuntimeError(f"{count} nodes not up after {timeout:g} s: "
                                   f"{self.alive_nodes()}; monitor log: {self.monitor_log()}")
            time.sleep(2)
        return time.time() - start

    def monitor_log(self) -> str:
        return self.head.run("tail -n 30 /tmp/ray/session_latest/logs/monitor.log").stdout

    def forward(self) -> None:
        """`python pipelines/cluster.py forward` in the background, as a user runs it."""
        dash, mlf = free_port(), free_port()
        log = open(self.workdir / "forward.log", "w")
        self._forward = subprocess.Popen(
            [sys.executable, str(REPO / "pipelines" / "cluster.py"), "forward", str(self.config),
             "--dashboard-port", str(dash), "--mlflow-port", str(mlf)],
            cwd=REPO, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        self.dashboard, self.mlflow_url = f"http://127.0.0.1:{dash}", f"http://127.0.0.1:{mlf}"
        deadline = time.time() + 60
        while not (_answers(f"{self.dashboard}/api/version")
                   and _answers(f"{self.mlflow_url}/health")):
            if self._forward.poll() is not None or time.time() > deadline:
                raise RuntimeError("port-forwarding did not come up: "
                                   + (self.workdir / "forward.log").read_text()[-2000:])
            time.sleep(0.5)

    def put_file(self, name: str, text: str) -> str:
        """A file in the head's HOME (a study file the user wrote there); its path there."""
        (self.head.home / name).write_text(text)
        return f"{HOST_HOME}/{name}"

    def submit(self, entrypoint: list[str]) -> str:
        """`ray job submit --no-wait --working-dir . -- ENTRYPOINT`; the job id."""
        if self.dashboard is None:
            self.forward()
        result = self._ray_cli("job", "submit", "--address", self.dashboard, "--no-wait",
                               "--working-dir", ".", "--", *entrypoint, timeout=300)
        found = re.search(r"raysubmit_\w+", result.stdout + result.stderr)
        if result.returncode != 0 or not found:
            raise RuntimeError(f"ray job submit failed: {(result.stdout + result.stderr)[-2000:]}")
        return found.group(0)

    def follow(self, job: str, lines: list[tuple[float, str]]) -> threading.Thread:
        """Follow the job's log in the background, each line with its arrival time."""
        def run() -> None:
            process = subprocess.Popen([_ray(), "job", "logs", "--address", self.dashboard,
                                        "--follow", job], cwd=REPO, env=self.env(),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in process.stdout:
                lines.append((time.time(), line.rstrip("\n")))
            process.wait()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def status(self, job: str) -> str:
        out = self._ray_cli("job", "status", "--address", self.dashboard, job, timeout=60)
        # "Job 'ID' succeeded" / "... failed" / "... was stopped", else "Status for job 'ID': S".
        text = out.stdout + out.stderr
        ended = re.search(r"Job '\S+' (succeeded|failed|was stopped)", text)
        if ended:
            return {"succeeded": "SUCCEEDED", "failed": "FAILED",
                    "was stopped": "STOPPED"}[ended.group(1)]
        current = re.search(r"Status for job '\S+': (?:JobStatus\.)?(\w+)", text)
        return current.group(1) if current else "UNKNOWN"

    def wait(self, job: str, timeout: float = 900) -> tuple[str, str]:
        """Wait for the job to end; (its final status, its whole log)."""
        deadline = time.time() + timeout
        status = "UNKNOWN"
        while time.time() < deadline:
            status = self.status(job)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            time.sleep(3)
        logs = self._ray_cli("job", "logs", "--address", self.dashboard, job, timeout=120)
        (self.workdir / f"{job}.log").write_text(logs.stdout)
        return status, logs.stdout

    def down(self) -> float:
        """`ray down -y`, then what it leaves: Ray's agents on the worker hosts."""
        start = time.time()
        self._stop_forward()
        self._ray_cli("down", "-y", str(self.config), log_name="ray-down.log", timeout=300)
        elapsed = time.time() - start
        for host in [self.head, *self.workers]:
            if host.alive:
                host.run("ray stop --force >/dev/null 2>&1; true", timeout=120)
        # MLflow stops by itself once the head's raylet is gone (start-mlflow.sh's watchdog).
        for host in [self.head, *self.workers]:
            deadline = time.time() + 60
            while host.alive and time.time() < deadline and host.run(
                    f"pgrep -f '{LEFTOVER_PATTERN}' || true").stdout.strip():
                time.sleep(1)
        self.is_up = False
        return elapsed

    # -- teardown -----------------------------------------------------------------------------
    def _stop_forward(self) -> None:
        if self._forward is not None:
            stop_process_group(self._forward, wait_s=5)
            self._forward = None

    def close(self) -> None:
        """Everything this made, by PID and by name: hosts (and all their processes), the
        network, the S3 server, the laptop's cluster state and folders. Idempotent."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._stop_forward()
        if self.is_up:
            try:
                self.down()
            except Exception as e:  # noqa: BLE001 - the hosts go below regardless
                self.log(f"ray down failed: {e}")
        if self.net is not None:
            self.net.close()
        if self._s3_cm is not None:
            self._s3_cm.__exit__(None, None, None)
        # Ray's local provider keeps the cluster's state on the laptop side.
        if self.net is not None:
            for path in Path("/tmp/ray").glob("cluster-hivg-local*.state"):
                if self.head is not None and self.head.ip in path.read_text(errors="ignore"):
                    path.unlink(missing_ok=True)
        shutil.rmtree(self.laptop, ignore_errors=True)


def _answers(url: str) -> bool:
    """Whether an HTTP server answers there at all (the dashboard asks for the token)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


# -- studies the flow runs ---------------------------------------------------------------------
def study_text(name: str, *, workers: int, cpus_per_worker: int, train: int, epochs: tuple,
               variants: dict | None = None, seeds: tuple = (13,), batch: int = 16) -> str:
    """A tiny-HiVG study on the synthetic benchmark, from random weights (no pre-training)."""
    import yaml

    stage_keys = {f"hilora.stages.stage{i}.epochs": e for i, e in enumerate(epochs)}
    stage_keys.update({f"hilora.stages.stage{i}.batch_size": batch for i in range(len(epochs))})
    return yaml.safe_dump({
        "name": name, "base": "tiny",
        "overrides": {"model.weights": "random", "data.max_train_samples": train,
                      "data.max_eval_samples": 40, "data.augment": False,
                      "hilora.num_stages": len(epochs), **stage_keys},
        "variants": variants or {"baseline": {}}, "seeds": list(seeds),
        "datasets": ["synthetic"],
        "resources": {"workers": workers, "cpus_per_worker": cpus_per_worker,
                      "gpus_per_worker": 0}}, sort_keys=False)


def trial_folders(c: LocalCluster, study: str) -> dict[str, dict[str, bytes]]:
    """{trial folder: {file: bytes}} of a study's trials in the bucket (no checkpoints)."""
    client = c.s3.client()
    prefix = f"hivg/{study}/trials/"
    found: dict[str, dict[str, bytes]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=c.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            trial, _, name = rel.partition("/")
            if name in ("summary.json", "metrics.jsonl", "config.yaml"):
                body = client.get_object(Bucket=c.bucket, Key=obj["Key"])["Body"].read()
                found.setdefault(trial, {})[name] = body
    return found


def mlflow_runs(c: LocalCluster, experiment: str) -> list:
    """Every run of an experiment on the head's MLflow server (through the port-forward)."""
    from mlflow import MlflowClient

    client = MlflowClient(c.mlflow_url)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def run_with_host_loss(c: LocalCluster, name: str, text: str, log=print) -> dict:
    """Submit the study, kill the worker host that runs a trial once that trial's first
    epoch is in the bucket, and wait for the study to finish on what is left. Returns what
    happened: the job's status and log, the host lost, the trial(s) it ran, and the seconds
    from the loss to each interrupted trial's "resuming ..." line (the trainer prints it just
    before its first step)."""
    path = c.put_file(f"{name}.yaml", text)
    job = c.submit(["python", "pipelines/ablate.py", path, "--max-concurrent", "2"])
    lines: list[tuple[float, str]] = []
    c.follow(job, lines)
    deadline = time.time() + 600
    victim = None
    while victim is None:
        if time.time() > deadline or c.status(job) in ("FAILED", "STOPPED", "SUCCEEDED"):
            raise RuntimeError(f"no trial reached its first epoch to interrupt: "
                               f"{[l for _, l in lines][-30:]}")
        for trial, files in trial_folders(c, name).items():
            rows = [json.loads(r) for r in files.get("metrics.jsonl", b"").splitlines()]
            if "summary.json" not in files and any(r["epoch"] >= 1 for r in rows):
                hosts = {r.data.tags.get("host") for r in mlflow_runs(c, name)
                         if r.data.tags.get("trial_key", "").replace("/", "_") == trial
                         and r.info.status == "RUNNING"}
                if len(hosts) == 1:
                    victim = (trial, hosts.pop())
                    break
        time.sleep(1)
    host = next(h for h in c.workers if h.name == victim[1])
    running_there = [r.data.tags["trial_key"].replace("/", "_") for r in mlflow_runs(c, name)
                     if r.data.tags.get("host") == host.name and r.info.status == "RUNNING"]
    killed_at = time.time()
    host.kill()
    log(f"killed {host.name} ({host.ip}) while it trained {', '.join(running_there)}")
    status, text_log = c.wait(job, timeout=900)
    resumed = {}
    for trial in running_there:
        hits = [t for t, line in lines if f"resuming {trial} at " in line]
        resumed[trial] = round(hits[0] - killed_at, 1) if hits else None
    return {"job": job, "status": status, "log": text_log, "lines": lines, "host": host,
            "interrupted": running_there, "seconds_to_resume": resumed,
            "killed_at": killed_at}


# -- measuring it (issue notes) ----------------------------------------------------------------
def measure(workdir: Path) -> dict:
    """`ray up`/`ray down` wall time, one 4-trial study on the hosts against the same study
    on a plain local Ray (this machine, same command), and the seconds from a worker host's
    loss to the interrupted trial's resumption. Everything in one run."""
    out: dict = {}
    text = study_text("four-trials", workers=0, cpus_per_worker=1, train=240, epochs=(2, 1),
                      variants={"baseline": {}, "no-bridge": {"model.bridge.enabled": False}},
                      seeds=(13, 14))
    with LocalCluster(workdir / "cluster") as c:
        out["ray_up_s"] = round(c.up(), 1)
        out["nodes_alive_after_up_s"] = round(c.wait_for_nodes(3), 1)
        c.forward()
        start = time.time()
        job = c.submit(["python", "pipelines/ablate.py", c.put_file("four.yaml", text),
                        "--max-concurrent", "2"])
        status, _ = c.wait(job, timeout=1800)
        out["four_trial_study_on_hosts_s"] = round(time.time() - start, 1)
        out["four_trial_study_on_hosts_status"] = status
        loss = run_with_host_loss(c, "host-loss", study_text(
            "host-loss", workers=0, cpus_per_worker=1, train=240, epochs=(3, 1),
            variants={"baseline": {}, "no-bridge": {"model.bridge.enabled": False}},
            seeds=(13, 14)))
        out["host_loss_status"] = loss["status"]
        out["seconds_from_host_loss_to_resumed_trial"] = loss["seconds_to_resume"]
        out["ray_down_s"] = round(c.down(), 1)
    # The same study, the same command, on a plain local Ray here (2 cores).
    local = workdir / "local"
    local.mkdir(parents=True, exist_ok=True)
    (local / "four.yaml").write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    start = time.time()
    result = subprocess.run([sys.executable, str(REPO / "pipelines" / "ablate.py"),
                             str(local / "four.yaml"), "--storage", str(local / "runs"),
                             "--max-concurrent", "2"], cwd=REPO, env=env,
                            capture_output=True, text=True)
    out["four_trial_study_on_local_ray_s"] = round(time.time() - start, 1)
    out["four_trial_study_on_local_ray_exit"] = result.returncode
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hivg-cluster-measure-") as tmp:
        print(json.dumps(measure(Path(tmp)), indent=2))
