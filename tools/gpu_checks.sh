#!/usr/bin/env bash
# Issue 22's GPU checks in one device call (docs/results.md#on-a-gpu says what they measure).
#
#   bash tools/gpu_checks.sh wheels        # here, once: open_clip and its two missing needs
#                                          # as wheels in .whl/ (git-ignored)
#   device run: bash tools/gpu_checks.sh run   carry [".whl"], timeout_s 560
#
# The device machine has torch (Python 3.12) but not open_clip, and no network. Each check has
# its own time limit, so a slow compile still leaves the others' JSON in $OUT:
#   1. HiVG-B/16 training step, reference / fast / fast compiled (CUDA graphs) at the last
#      HiLoRA stage, and the bare frozen towers in the same run (fast/ref 3.5x, MFU targets);
#   2. HiVG-L/14's last-stage step broken down by profiler (attention, adapters, bridge,
#      optimizer, launches).
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux2014_x86_64 -d .whl \
        open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0
    ls .whl
    ;;
run)
    out="${OUT:-gpu-checks}"
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/*.whl || { echo "no wheels in .whl/: run 'bash tools/gpu_checks.sh wheels' here"; exit 2; }
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    python3 -c "import torch, open_clip; print(torch.__version__, open_clip.__version__)" \
        | tee -a "$out/gpu.txt"
    timeout 330 python3 pipelines/benchmark.py --training-step --compile-step --steps 10 \
        --warmup 3 --out "$out/hivg-b16-compiled.json" 2>&1 | tee "$out/hivg-b16-compiled.log"
    timeout 150 python3 pipelines/benchmark.py --step-breakdown --preset hivg-l14 --steps 6 \
        --warmup 3 --out "$out/hivg-l14-breakdown.json" 2>&1 | tee "$out/hivg-l14-breakdown.log"
    ;;
*)
    echo "usage: bash tools/gpu_checks.sh wheels|run" >&2
    exit 2
    ;;
esac
