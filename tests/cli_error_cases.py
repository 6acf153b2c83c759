"""The bad inputs every pipeline refuses before any work: the table tests/test_cli_errors.py
checks and tools/errors_doc.py writes to docs/errors.md.

Each case: an id, the pipeline and its arguments, a part of the one line it must print, and
optionally packages to hide (tests/hide_modules.py) or a condition. Placeholders: {storage} a
fresh folder path (it must not exist afterwards: nothing was made), {file} an existing file,
{dir} an existing empty folder, {bad_config}/{bad_study} YAML files with a syntax error,
{key_config}/{key_study} valid YAML files with an unknown key,
{config_dict_ckpt} a checkpoint whose config is a mapping with an unknown key.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACE = "search_spaces/hilora_ranks.yaml"


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]            # pipeline file name, then its arguments
    expect: str                      # part of the one error line
    hide: str = ""                   # packages not installed, e.g. "ray"
    env: tuple[tuple[str, str], ...] = ()
    needs_no_cuda: bool = False


NO_ML = "--no-mlflow"
S3_ENV = (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
          ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"), ("AWS_REGION", "us-east-1"))

CASES = [
    # storage
    Case("train-storage-file", ("train.py", "--storage", "{file}"), "not a folder"),
    Case("train-storage-unwritable", ("train.py", "--storage", "/proc/hivg-runs"),
         "not writable"),
    Case("train-storage-scheme", ("train.py", "--storage", "ftp://host/runs"),
         "expected a folder or s3://BUCKET/PREFIX"),
    Case("ablate-storage-file", ("ablate.py", "--storage", "{file}", NO_ML), "not a folder"),
    Case("ablate-storage-unwritable", ("ablate.py", "--storage", "/proc/hivg-runs", NO_ML),
         "not writable"),
    Case("prepare-storage-file", ("prepare_data.py", "--dataset", "synthetic", "--storage",
                                  "{file}"), "not a folder"),
    Case("prepare-storage-unwritable", ("prepare_data.py", "--dataset", "synthetic",
                                        "--storage", "/proc/hivg-runs"), "not writable"),
    Case("report-s3-storage", ("report.py", "demo", "--storage", "s3://bucket/p"),
         "--storage s3://bucket/p: cannot reach", env=S3_ENV),
    # MLflow
    Case("train-mlflow-scheme", ("train.py", "--storage", "{storage}", "--mlflow-uri",
                                 "bogus://x"), "unknown tracking URI scheme 'bogus'"),
    Case("ablate-mlflow-scheme", ("ablate.py", "--storage", "{storage}", "--mlflow-uri",
                                  "bogus://x"), "unknown tracking URI scheme 'bogus'"),
    Case("train-mlflow-unreachable", ("train.py", "--storage", "{storage}", "--mlflow-uri",
                                      "http://127.0.0.1:9"), "is unreachable"),
    Case("train-no-mlflow-installed", ("train.py", "--storage", "{storage}"),
         'needs mlflow, which is not installed: pip install -e ".[cluster]"', hide="mlflow"),
    # Ray
    Case("train-workers-no-ray", ("train.py", "--storage", "{storage}", "--workers", "2", NO_ML),
         'needs ray, which is not installed: pip install -e ".[cluster]"', hide="ray"),
    Case("train-address-no-ray", ("train.py", "--storage", "{storage}", "--address", "auto",
                                  NO_ML), "--address needs ray", hide="ray"),
    Case("ablate-no-ray", ("ablate.py", "--storage", "{storage}", NO_ML),
         "a study (Ray Tune) needs ray", hide="ray"),
    Case("train-address-no-port", ("train.py", "--storage", "{storage}", "--address",
                                   "10.0.0.1", NO_ML), "expected auto, HOST:PORT"),
    Case("train-address-bad-port", ("train.py", "--storage", "{storage}", "--address",
                                    "head:99999", NO_ML), "expected auto, HOST:PORT"),
    Case("ablate-address-malformed", ("ablate.py", "--storage", "{storage}", "--address",
                                      "head:port", NO_ML), "expected auto, HOST:PORT"),
    # devices
    Case("evaluate-device-tpu", ("evaluate.py", "--checkpoint", "best.pt", "--dataset",
                                 "synthetic", "--device", "tpu"),
         "--device tpu: expected auto, cpu, cuda or cuda:N"),
    Case("evaluate-device-cuda", ("evaluate.py", "--checkpoint", "best.pt", "--dataset",
                                  "synthetic", "--device", "cuda"),
         "--device cuda: CUDA is not available", needs_no_cuda=True),
    Case("train-device-cuda-abc", ("train.py", "--storage", "{storage}", "device=cuda:abc",
                                   NO_ML), "device: expected auto, cpu, cuda or cuda:N"),
    Case("train-device-cuda", ("train.py", "--storage", "{storage}", "device=cuda", NO_ML),
         "device=cuda: CUDA is not available", needs_no_cuda=True),
    Case("evaluate-config-dict", ("evaluate.py", "--checkpoint", "{config_dict_ckpt}",
                                  "--dataset", "synthetic", "--storage", "{dir}"),
         "bogus: unknown key"),
    # config values
    Case("train-lr-inf", ("train.py", "--storage", "{storage}", "hilora.stages.stage0.lr=inf",
                          NO_ML), "hilora.stages.stage0.lr: expected a finite number"),
    Case("train-weight-decay-inf", ("train.py", "--storage", "{storage}",
                                    "optim.weight_decay=.inf", NO_ML),
         "optim.weight_decay: expected a finite number"),
    Case("train-stage-epochs", ("train.py", "--storage", "{storage}",
                                "hilora.stages.stage0.epochs=-1", NO_ML),
         "hilora.stages.stage0.epochs: expected an integer >= 0"),
    Case("train-config-yaml", ("train.py", "--storage", "{storage}", "--config", "{bad_config}",
                               NO_ML),
         "bad.yaml:4:10: not valid YAML: mapping values are not allowed here"),
    Case("ablate-study-yaml", ("ablate.py", "{bad_study}", "--storage", "{storage}", NO_ML),
         "study.yaml:2:6: not valid YAML"),
    Case("train-config-key", ("train.py", "--storage", "{storage}", "--config", "{key_config}",
                              NO_ML), "key.yaml:3:3: optim.lrr: unknown key"),
    Case("ablate-study-key", ("ablate.py", "{key_study}", "--storage", "{storage}", NO_ML),
         "key-study.yaml:4:15: variants.no-bridge.model.bridge.enabledd: unknown key"),
    # numeric flags
    Case("train-workers-0", ("train.py", "--storage", "{storage}", "--workers", "0", NO_ML),
         "--workers 0: expected an integer >= 1"),
    Case("train-max-failures", ("train.py", "--storage", "{storage}", "--max-failures", "-1",
                                NO_ML), "--max-failures -1: expected an integer >= 0"),
    Case("train-gpus-per-worker", ("train.py", "--storage", "{storage}", "--gpus-per-worker",
                                   "-1", NO_ML), "--gpus-per-worker -1: expected a number >= 0"),
    Case("train-cpus-per-worker", ("train.py", "--storage", "{storage}", "--cpus-per-worker",
                                   "0", NO_ML), "--cpus-per-worker 0: expected a number > 0"),
    Case("ablate-max-concurrent", ("ablate.py", "--storage", "{storage}", "--max-concurrent",
                                   "-1", NO_ML), "--max-concurrent -1: expected an integer >= 1"),
    Case("ablate-max-concurrent-0", ("ablate.py", "--storage", "{storage}", "--max-concurrent",
                                     "0", NO_ML), "--max-concurrent 0: expected an integer >= 1"),
    Case("ablate-workers-per-trial", ("ablate.py", "--storage", "{storage}",
                                      "--workers-per-trial", "-1", NO_ML),
         "--workers-per-trial -1: expected an integer >= 0"),
    Case("ablate-cpus-per-worker", ("ablate.py", "--storage", "{storage}", "--cpus-per-worker",
                                    "0", NO_ML), "--cpus-per-worker 0: expected a number > 0"),
    Case("ablate-gpus-per-worker", ("ablate.py", "--storage", "{storage}", "--gpus-per-worker",
                                    "-1", NO_ML), "--gpus-per-worker -1: expected a number >= 0"),
    Case("sweep-num-samples-0", ("sweep.py", SPACE, "--storage", "{storage}", "--num-samples",
                                 "0", NO_ML), "--num-samples 0: expected an integer >= 1"),
    # names
    Case("train-name-dotdot", ("train.py", "--storage", "{storage}", "--name", "../../x", NO_ML),
         "--name '../../x': expected letters, digits"),
    Case("train-name-slash-space", ("train.py", "--storage", "{storage}", "--name", "a/b c",
                                    NO_ML), "--name 'a/b c': expected letters, digits"),
    Case("ablate-name-dotdot", ("ablate.py", "--storage", "{storage}", "--name", "../x", NO_ML),
         "--name '../x': expected letters, digits"),
    # usage
    Case("train-unknown-flag", ("train.py", "--bogus"),
         "unrecognized arguments: --bogus (see train.py --help)"),
    Case("report-no-study", ("report.py",),
         "the following arguments are required: study (see report.py --help)"),
    # benchmarks
    Case("benchmark-compile-backend", ("benchmark.py", "--training-step", "--compile-step",
                                       "inductr"),
         "--compile-step: unknown torch.compile backend 'inductr'"),
    Case("benchmark-compile-without-steps", ("benchmark.py", "--model-stats", "--compile-step"),
         "--compile-step: times training steps; use it with --training-step"),
    Case("benchmark-stage-range", ("benchmark.py", "--step-breakdown", "--preset", "tiny",
                                   "--stage", "3"),
         "--stage: expected 0 to 2 for tiny, got 3"),
]


@dataclass
class Outcome:
    case: Case
    command: str
    code: int
    stderr: str
    seconds: float
    storage_made: bool
    cpu_seconds: float | None = None   # user + system time of the command, when measured


def make_inputs(root: Path) -> dict[str, str]:
    """The placeholders' files under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "a-file").write_text("not a folder\n")
    (root / "empty").mkdir(exist_ok=True)
    (root / "bad.yaml").write_text("preset: tiny\nseed: 1\nmodel:\n  clip: a: b\n")
    (root / "study.yaml").write_text("base: tiny\n  bad: indent\nvariants: {a: {}}\n")
    (root / "key.yaml").write_text("preset: tiny\noptim:\n  lrr: 0.1\n")
    (root / "key-study.yaml").write_text("base: tiny\nvariants:\n  baseline: {}\n"
                                         "  no-bridge: {model.bridge.enabledd: false}\n")
    ckpt = root / "config-dict.pt"
    if not ckpt.is_file():
        import torch

        torch.save({"model": {}, "config": {"bogus": 1}, "stage_index": 0}, ckpt)
    return {"file": str(root / "a-file"), "dir": str(root / "empty"),
            "bad_config": str(root / "bad.yaml"), "bad_study": str(root / "study.yaml"),
            "key_config": str(root / "key.yaml"), "key_study": str(root / "key-study.yaml"),
            "config_dict_ckpt": str(ckpt)}


def run_case(case: Case, root: Path, inputs: dict[str, str], cpu_time: bool = False) -> Outcome:
    """Run one case in `root`; `cpu_time`: measure its CPU time with /usr/bin/time (wall
    time says little on a shared machine)."""
    storage = root / f"storage-{case.id}"
    values = {**inputs, "storage": str(storage)}
    args = [a.format(**values) for a in case.argv[1:]]
    script = str(REPO / "pipelines" / case.argv[0])
    prefix = [str(REPO / "tests" / "hide_modules.py"), case.hide] if case.hide else []
    env = {k: v for k, v in os.environ.items()
           if k not in ("HIVG_STORAGE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(dict(case.env), PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    timing = root / f"cpu-{case.id}.txt"
    timer = ["/usr/bin/time", "-o", str(timing), "-f", "%U %S"] if cpu_time else []
    start = time.perf_counter()
    done = subprocess.run([*timer, sys.executable, *prefix, script, *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    cpu = sum(map(float, timing.read_text().split()[-2:])) if cpu_time else None
    shown = ["pipelines/" + case.argv[0], *case.argv[1:]]  # placeholders left as they are
    command = " ".join(a if re.fullmatch(r"[\w./:=+,@{}-]+", a) else shlex.quote(a)
                       for a in shown)
    return Outcome(case, command, done.returncode,
                   done.stderr.strip(), seconds, storage.exists(), cpu)
