"""Cluster files and access to a running cluster (Ray's cluster launcher does the rest).

    python pipelines/cluster.py check cluster.yaml           # Ray's own checks, offline
    python pipelines/cluster.py forward cluster.yaml         # dashboard :8265, MLflow UI :5000
    python pipelines/cluster.py local --head-ip IP --worker-ip IP [--worker-ip IP ...] \\
        --ssh-user USER --ssh-key KEY --storage s3://BUCKET/hivg -o cluster-local.yaml
    python pipelines/cluster.py lock -o constraints.txt      # pin what is installed now
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from hivg.cli import run_main
from hivg.cli_args import Parser

REPO = Path(__file__).resolve().parents[1]
LOCAL_HEADER = """\
# Generated from cluster.yaml by `python pipelines/cluster.py local ...`: do not edit here.
# Ray's `local` provider: machines you already have, reached over SSH, running the same
# setup and start commands as the AWS cluster. Bring it up with
#   RAY_UP_enable_autoscaler_v2=0 ray up cluster-local.yaml
# (Ray 2.60's autoscaler v2 counts the head among the local provider's workers and starts
# one worker too few).
"""
LOCK_HEADER = """\
# The tested set: every package `pip install -e ".[cluster]"` installs, pinned. Cluster
# nodes (cluster/setup-node.sh) and CI (.ci/run) install with `-c constraints.txt`, so the
# head, every worker and the tests run the same Ray, torch and MLflow. Python 3.11, Linux
# x86_64. Regenerate after changing pyproject.toml, in a fresh environment:
#   pip install -e ".[cluster]" && python pipelines/cluster.py lock -o constraints.txt
"""


def main() -> int:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="run Ray's own preparation and validation of a file")
    c.add_argument("file")
    f = sub.add_parser("forward", help="forward the dashboard and the MLflow UI (ssh -L)")
    f.add_argument("file")
    f.add_argument("--dashboard-port", type=int, default=8265)
    f.add_argument("--mlflow-port", type=int, default=5000)
    g = sub.add_parser("local", help="cluster-local.yaml from cluster.yaml")
    g.add_argument("--from", dest="source", default=str(REPO / "cluster.yaml"))
    g.add_argument("--head-ip", required=True)
    g.add_argument("--worker-ip", action="append", required=True)
    g.add_argument("--ssh-user", required=True)
    g.add_argument("--ssh-key", required=True)
    g.add_argument("--storage", required=True, help="s3://BUCKET/PREFIX for HIVG_STORAGE")
    g.add_argument("--head-cpus", type=int, default=0, help="CPUs for tasks on the head")
    g.add_argument("--worker-cpus", type=int, help="CPUs per worker (default: detected)")
    g.add_argument("-o", "--output", help="file to write (default: stdout)")
    k = sub.add_parser("lock", help="pin the installed closure of hivg[cluster]")
    k.add_argument("-o", "--output", help="file to write (default: stdout)")
    args = p.parse_args()

    from hivg.orchestration import cluster

    if args.command == "check":
        prepared = cluster.check(cluster.load(args.file))
        types = ", ".join(prepared["available_node_types"])
        print(f"{args.file}: valid for Ray ({prepared['provider']['type']}; node types: {types})")
    elif args.command == "forward":
        command, mlflow = cluster.forward_command(args.file, args.dashboard_port,
                                                  args.mlflow_port)
        print(f"dashboard: http://127.0.0.1:{args.dashboard_port}  MLflow UI: "
              f"http://127.0.0.1:{args.mlflow_port} (the head's {mlflow}); Ctrl-C stops")
        return subprocess.call(command)
    elif args.command == "local":
        text = cluster.dump(cluster.local_config(
            cluster.load(args.source), head_ip=args.head_ip, worker_ips=args.worker_ip,
            ssh_user=args.ssh_user, ssh_private_key=args.ssh_key, storage=args.storage,
            head_cpus=args.head_cpus, worker_cpus=args.worker_cpus), LOCAL_HEADER)
        _write(text, args.output)
    else:
        _write(LOCK_HEADER + "\n".join(cluster.locked_requirements()) + "\n", args.output)
    return 0


def _write(text: str, output: str | None) -> None:
    if output:
        Path(output).write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    run_main(main)
