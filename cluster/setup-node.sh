#!/usr/bin/env bash
# Sets up one cluster node, head or worker (cluster.yaml's setup_commands run it after the
# repository was synced to ~/hivg; `ray up` runs it again on every update, so it is
# idempotent). What it leaves behind:
#   - Python 3.11, the version constraints.txt was tested with (every node of a Ray
#     cluster must run the same Python); from the deadsnakes PPA where the image lacks it;
#   - ~/hivg-venv, which sees the image's own packages and holds this project with the
#     pinned versions of constraints.txt, so the head and every worker (autoscaled ones
#     included) run the same Ray, torch and MLflow;
#   - a line in ~/.bashrc: every login shell, and so every command Ray runs, activates the
#     environment, reads the cluster's settings (~/.hivg/*.env) and uses Ray's token
#     authentication (the token itself is ~/.ray/auth_token, synced by file_mounts).
# pip reads the host's own settings: an index, or PIP_FIND_LINKS + PIP_NO_INDEX for a
# wheelhouse on machines that cannot reach one.
set -euo pipefail
repo=${HIVG_REPO:-$HOME/hivg}
venv=$HOME/hivg-venv
python=python3.11

if ! command -v "$python" >/dev/null || ! "$python" -c "import ensurepip, venv" 2>/dev/null; then
    sudo DEBIAN_FRONTEND=noninteractive add-apt-repository -y ppa:deadsnakes/ppa
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv
fi
[ -x "$venv/bin/python" ] || "$python" -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
    -c "$repo/constraints.txt" -e "$repo[cluster]"

mkdir -p ~/.hivg
line='. ~/hivg-venv/bin/activate; for f in ~/.hivg/*.env; do [ -f "$f" ] && . "$f"; done; export RAY_AUTH_MODE=token'
grep -qxF "$line" ~/.bashrc 2>/dev/null || echo "$line" >> ~/.bashrc
