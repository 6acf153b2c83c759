#!/usr/bin/env bash
# The MLflow tracking server on the Ray head (cluster.yaml's head_start_ray_commands).
#   - Bound to the head's private address (the one Ray announces): every node reaches it
#     there, and the security group keeps it inside the cluster. You reach the UI through
#     port-forwarding (`python pipelines/cluster.py forward cluster.yaml`).
#   - Runs and metrics in SQLite on the head's disk (~/mlflow/mlflow.db), or in the
#     database at $HIVG_MLFLOW_BACKEND; artifacts under $HIVG_STORAGE/mlartifacts (S3).
#   - Writes ~/.hivg/mlflow.env (MLFLOW_TRACKING_URI=http://PRIVATE-IP:5000). Every login
#     shell on the head reads it, and so does `ray start --head`, whose jobs inherit it:
#     a study submitted with `ray job submit` logs there with no flag.
# Started again (the old server stopped by its process group) on every `ray up`; stopped
# when Ray stops on the head.
set -euo pipefail
mkdir -p ~/mlflow ~/.hivg
ip=$(python -c "import ray.util; print(ray.util.get_node_ip_address())" 2>/dev/null)
port=${HIVG_MLFLOW_PORT:-5000}
backend=${HIVG_MLFLOW_BACKEND:-sqlite:///$HOME/mlflow/mlflow.db}
: "${HIVG_STORAGE:?is not set: cluster.yaml writes it to ~/.hivg/storage.env}"

if [ -f ~/mlflow/server.pid ]; then
    kill -- "-$(cat ~/mlflow/server.pid)" 2>/dev/null || true
    sleep 1
fi
nohup setsid mlflow server --host "$ip" --port "$port" --workers 2 \
    --backend-store-uri "$backend" --artifacts-destination "$HIVG_STORAGE/mlartifacts" \
    > ~/mlflow/server.log 2>&1 < /dev/null &
server=$!
echo $server > ~/mlflow/server.pid
# The server stops with Ray on this node: `ray down` (and `ray stop`) end the raylet, and
# on machines that stay up (cluster-local.yaml) nothing else would stop MLflow.
nohup setsid bash -c "
    for _ in \$(seq 300); do pgrep -x raylet >/dev/null && break; sleep 1; done
    while pgrep -x raylet >/dev/null; do sleep 2; done
    kill -- -$server 2>/dev/null" > /dev/null 2>&1 < /dev/null &
echo "export MLFLOW_TRACKING_URI=http://$ip:$port" > ~/.hivg/mlflow.env

for _ in $(seq 90); do
    if python -c "import urllib.request; urllib.request.urlopen('http://$ip:$port/health', timeout=2)" 2>/dev/null; then
        echo "mlflow server: http://$ip:$port (artifacts in $HIVG_STORAGE/mlartifacts)"
        exit 0
    fi
    sleep 1
done
echo "mlflow server did not answer on http://$ip:$port; see ~/mlflow/server.log:" >&2
tail -n 5 ~/mlflow/server.log >&2
exit 1
