#!/usr/bin/env bash
# The README's quick start timed from a clean clone, a fresh venv and an empty storage; every
# line is prefixed with seconds since the start (install, data, weights, study read from them).
#     bash tools/time_quick_start.sh [REPO] [WORK_DIR]     # run it on an otherwise idle machine
set -uo pipefail
repo=$(realpath "${1:-.}"); work=${2:-/tmp/hivg-quick-start}
rm -rf "$work" && mkdir -p "$work/mirror"
stamp() { python3 -u -c 'import sys, time
t0 = float(sys.argv[1])
for line in sys.stdin: print(f"{time.time() - t0:8.1f}  {line}", end="", flush=True)' "$t0"; }
t0=$(date +%s.%N)
echo "start $(date -u +%FT%TZ) commit $(git -C "$repo" rev-parse --short HEAD)"
git clone -q "$repo" "$work/clone" && cd "$work/clone" || exit 1
{ python3 -m venv "$work/venv" && "$work/venv/bin/pip" install -q -e ".[cluster]" \
    && echo "installed"; } 2>&1 | stamp
HIVG_MIRROR_DIR="$work/mirror" PYTHONUNBUFFERED=1 "$work/venv/bin/python" pipelines/ablate.py \
    --storage "$work/runs" 2>&1 | stamp
echo "exit ${PIPESTATUS[0]} end $(date -u +%FT%TZ)"
