"""Measure a study's resume after its driver is SIGKILLed (issue 19), end to end:

    flock /tmp/hivg-measure.lock python tools/measure_resume.py [--seeds 4] [--epochs 2]

A variants study (3 variants x N seeds, tiny preset, synthetic benchmark, shortened epochs)
runs with `ablate.py --storage s3://...` against a local moto_server, behind a counting proxy
on loopback (every request and byte sent to S3). After 6 trials finished, the driver's process
group is SIGKILLed (and the Ray processes of that run, found by its own temp dir), and the study
is resumed with `--resume` from another, empty HIVG_MIRROR_DIR. Then the same study runs
uninterrupted into another prefix, for the table to compare and the bytes per trial.

Prints one JSON object: seconds from `--resume` to the first training step, trials re-run,
MLflow child runs, whether the tables are equal, S3 requests and bytes per trial.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from s3_server import aws_env, running_s3_server  # noqa: E402
from tools.processes import kill_processes_naming  # noqa: E402

STUDY = """name: measure
base: tiny
datasets: [synthetic]
seeds: [{seeds}]
resources: {{workers: 0, cpus_per_worker: 1}}
overrides:
  data.max_train_samples: 32
  data.max_eval_samples: 20
  data.num_workers: 0
  model.weights: random
  hilora.stages.stage0.epochs: {epochs}
  hilora.stages.stage0.batch_size: 8
  hilora.stages.stage1.epochs: 0
  hilora.stages.stage2.epochs: 0
variants:
  baseline: {{}}
  no-bridge: {{model.bridge.enabled: false}}
  lr-low: {{hilora.stages.stage0.lr: 1.0e-4}}
"""
SIZES = {"train": 60, "val": 20, "test": 20}
# A line that says a trial trains: a fresh one's first evaluation, or a resumed one's restore.
TRAINING = re.compile(r"\[stage0\] start:|resuming \S+ at stage\d after epoch")


class Counter:
    def __init__(self) -> None:
        self.requests = self.sent = self.received = 0
        self.lock = threading.Lock()

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {"requests": self.requests, "bytes_sent": self.sent,
                    "bytes_received": self.received}


def counting_proxy(target_port: int, counter: Counter) -> ThreadingHTTPServer:
    """An HTTP forwarder on 127.0.0.1 in front of moto: counts each request and its bytes."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _forward(self) -> None:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                body = b""
                while True:  # the S3 client streams uploads in chunks
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline().strip():
                            pass
                        break
                    body += self.rfile.read(size)
                    self.rfile.readline()
            else:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
            length = len(body)
            head = len(self.requestline) + sum(len(k) + len(v) + 4
                                               for k, v in self.headers.items())
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("transfer-encoding", "expect", "content-length",
                                            "connection")}
            headers["Content-Length"] = str(length)
            conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=120)
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            conn.close()
            with counter.lock:
                counter.requests += 1
                counter.sent += head + length
                counter.received += len(data)
            self.send_response(response.status)
            for k, v in response.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            # HEAD answers carry the object's size, not a body's: passed on as they came
            size = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", size or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_ablate(study: Path, storage: str, mirror: Path, env: dict[str, str], uri: str,
               work: Path, flags: tuple[str, ...] = (), kill_when=None) -> dict:
    """ablate.py in its own process group; stdout lines time-stamped; `kill_when()` true:
    SIGKILL the group and the Ray processes of that run."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="hivg-m-", dir="/tmp"))
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "pipelines" / "ablate.py"), str(study), "--storage",
         storage, "--mlflow-uri", uri, *flags], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, cwd=work, start_new_session=True,
        env={**env, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(ray_tmp),
             "HIVG_MIRROR_DIR": str(mirror)})
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend(
        (time.monotonic() - start, ln) for ln in process.stdout), daemon=True)
    reader.start()
    killed = False
    while process.poll() is None:
        if kill_when is not None and kill_when():
            os.killpg(process.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.5)
    process.wait()
    kill_processes_naming(ray_tmp)
    reader.join(10)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"rc": process.returncode, "killed": killed, "lines": lines,
            "wall_s": time.monotonic() - start}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=4, help="seeds per variant (3 variants)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--kill-after", type=int, default=6, help="finished trials before the kill")
    p.add_argument("--no-reference", action="store_true", help="skip the uninterrupted run")
    args = p.parse_args()
    import boto3
    import mlflow

    work = Path(tempfile.mkdtemp(prefix="hivg-measure-"))
    study = work / "measure.yaml"
    seeds = ", ".join(str(13 + i) for i in range(args.seeds))
    study.write_text(STUDY.format(seeds=seeds, epochs=args.epochs))
    n_trials = 3 * args.seeds
    # The synthetic benchmark at the tests' small size, made once; machine 1 holds it, machine
    # 2 (the resume) gets it from the bucket, machine 3 (the reference) holds its own copy.
    from hivg.data.prepare import prepare_synthetic

    prepare_synthetic(work / "machine-1" / "measure" / "killed", seed=3, sizes=SIZES,
                      pack_images=True)
    shutil.copytree(work / "machine-1" / "measure" / "killed" / "data",
                    work / "machine-3" / "measure" / "reference" / "data")
    out: dict = {"trials": n_trials, "epochs": args.epochs}
    with running_s3_server(work / "moto.log") as server:
        counter = Counter()
        proxy = counting_proxy(int(server.url.rsplit(":", 1)[1]), counter)
        url = f"http://127.0.0.1:{proxy.server_address[1]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(aws_env(url), AWS_SHARED_CREDENTIALS_FILE=str(work / "none"),
                   AWS_CONFIG_FILE=str(work / "none"), HF_HUB_OFFLINE="1")
        client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket="measure")

        def summaries(prefix: str) -> dict[str, bytes]:
            found = {}
            for page in client.get_paginator("list_objects_v2").paginate(
                    Bucket="measure", Prefix=f"{prefix}/measure/trials/"):
                for o in page.get("Contents", []):
                    if o["Key"].endswith("/summary.json"):
                        found[o["Key"]] = client.get_object(Bucket="measure",
                                                            Key=o["Key"])["Body"].read()
            return found

        uri = f"sqlite:///{work / 'mlflow.db'}"
        first = run_ablate(study, "s3://measure/killed", work / "machine-1", env, uri, work,
                           kill_when=lambda: len(summaries("killed")) >= args.kill_after)
        if not first["killed"]:
            print("\n".join(ln for _, ln in first["lines"][-40:]), file=sys.stderr)
            raise SystemExit(f"the first run ended (exit {first['rc']}) before the kill")
        before = summaries("killed")
        out["finished_at_kill"] = len(before)
        out["first_run_s"] = round(first["wall_s"], 1)
        at_kill = counter.snapshot()
        second = run_ablate(study, "s3://measure/killed", work / "machine-2", env, uri, work,
                            ("--resume",))
        resumed = counter.snapshot()
        if second["rc"] != 0:
            print("\n".join(ln for _, ln in second["lines"][-40:]), file=sys.stderr)
        out["resume_rc"] = second["rc"]
        out["resume_wall_s"] = round(second["wall_s"], 1)
        first_step = next(((t, ln) for t, ln in second["lines"] if TRAINING.search(ln)), None)
        out["s_from_resume_to_first_training_step"] = round(first_step[0], 1) \
            if first_step else None
        out["first_training_line"] = first_step[1].strip()[-120:] if first_step else None
        after = summaries("killed")
        out["trials_rerun"] = sum(1 for k, v in before.items() if after.get(k) != v)
        out["resumed_lines"] = [ln.strip()[-100:] for _, ln in second["lines"]
                                if "resuming" in ln]
        mc = mlflow.MlflowClient(uri)
        runs = mc.search_runs([mc.get_experiment_by_name("measure").experiment_id])
        out["mlflow_children"] = sum("mlflow.parentRunId" in r.data.tags for r in runs)
        out["mlflow_parents"] = sum("mlflow.parentRunId" not in r.data.tags for r in runs)
        out["mlflow_running"] = sum(r.info.status == "RUNNING" for r in runs)
        out["s3_resume"] = {k: resumed[k] - at_kill[k] for k in resumed}
        killed_rows = json.loads(client.get_object(
            Bucket="measure", Key="killed/measure/results.json")["Body"].read())["rows"]
        if not args.no_reference:
            start = counter.snapshot()
            ref = run_ablate(study, "s3://measure/reference", work / "machine-3", env,
                             f"sqlite:///{work / 'mlflow-ref.db'}", work)
            end = counter.snapshot()
            out["reference_rc"] = ref["rc"]
            out["reference_wall_s"] = round(ref["wall_s"], 1)
            out["s3_uninterrupted_per_trial"] = {k: round((end[k] - start[k]) / n_trials)
                                                 for k in end}
            ref_rows = json.loads(client.get_object(
                Bucket="measure", Key="reference/measure/results.json")["Body"].read())["rows"]
            strip = [{k: v for k, v in r.items() if "wall" not in k} for r in killed_rows]
            out["table_equal"] = strip == [{k: v for k, v in r.items() if "wall" not in k}
                                           for r in ref_rows]
            if not out["table_equal"]:
                out["table_killed"], out["table_reference"] = strip, ref_rows
        proxy.shutdown()
    print(json.dumps(out, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
