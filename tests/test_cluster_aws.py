"""cluster.yaml, offline: Ray's own config checks, Ray's AWS bootstrap against a real
moto_server over HTTP (IAM role and instance profile, key pair, security group, subnets,
as Ray makes them), a spot GPU worker's launch request, and what no schema checks: the
pinned install, the MLflow address trials get, GPU node types against the studies' trials.
The commands themselves run on real SSH hosts in tests/test_cluster_hosts.py."""
from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
pytest.importorskip("moto")

from s3_server import ACCESS_KEY, REGION, SECRET_KEY, running_s3_server  # noqa: E402

from hivg.errors import UserError  # noqa: E402
from hivg.orchestration import cluster  # noqa: E402
from hivg.orchestration.resources import Resources  # noqa: E402
from hivg.orchestration.search_space import load_study  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AWS = REPO / "cluster.yaml"
GPUS_PER_INSTANCE = {"g5.2xlarge": 1, "p4d.24xlarge": 8}
CPUS_PER_INSTANCE = {"m6i.2xlarge": 8, "g5.2xlarge": 8, "p4d.24xlarge": 96}


def aws_config() -> dict:
    return cluster.load(AWS)


def test_cluster_yaml_passes_rays_own_preparation_and_validation():
    prepared = cluster.check(aws_config())
    types_ = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head"
    assert set(types_) == {"head", "gpu1-spot", "gpu1-ondemand", "gpu8-spot", "gpu8-ondemand"}
    broken = {**aws_config(), "max_workers": "ten"}
    with pytest.raises(UserError, match="cluster file rejected by Ray"):
        cluster.check(broken)


def test_the_local_cluster_file_is_generated_from_the_aws_one_and_valid():
    """cluster-local.yaml (committed) is what the generator makes from cluster.yaml: the
    same file mounts, setup and start commands, each host's CPUs in its `ray start`."""
    committed = cluster.load(REPO / "cluster-local.yaml")
    made = cluster.local_config(aws_config(), **{
        k: committed["provider"][k] for k in ("head_ip", "worker_ips")},
        ssh_user=committed["auth"]["ssh_user"],
        ssh_private_key=committed["auth"]["ssh_private_key"],
        storage=cluster.storage_of(committed), head_cpus=0, worker_cpus=8)
    assert made == committed, "cluster-local.yaml is stale: regenerate it (see its header)"
    for key in ("file_mounts", "setup_commands"):
        assert committed[key] == aws_config()[key]
    assert committed["head_start_ray_commands"][-1] == \
        aws_config()["head_start_ray_commands"][-1] + " --num-cpus=0"
    assert committed["worker_start_ray_commands"][-1].endswith("--num-cpus=8")
    cluster.check(committed)


def test_every_value_a_user_changes_sits_at_the_top():
    text = AWS.read_text()
    assert text.startswith("# ray up cluster.yaml\n")  # the command that runs it, first
    setup = text.index("---- How every node is set up")
    for needle in ("cluster_name:", "region:", "max_workers: 10", "idle_timeout_minutes:",
                   "HIVG_STORAGE=s3://YOUR-BUCKET/hivg", "InstanceType:", "MarketType: spot"):
        assert text.index(needle) < setup, needle
    assert cluster.storage_of(aws_config()) == "s3://YOUR-BUCKET/hivg"


def test_setup_installs_this_project_with_the_pinned_versions():
    """Every node runs cluster/setup-node.sh, which installs `.[cluster]` with `-c
    constraints.txt`; the lock pins exactly the installed closure (the tested set), within
    pyproject's ranges, so head and workers run the same Ray as the tests."""
    assert aws_config()["setup_commands"] == ["bash ~/hivg/cluster/setup-node.sh"]
    script = (REPO / "cluster" / "setup-node.sh").read_text()
    assert re.search(r'pip install .*\n?.*-c "\$repo/constraints.txt" -e "\$repo\[cluster\]"',
                     script)
    assert "python3.11" in script and "--system-site-packages" in script
    pins = cluster.read_constraints(REPO / "constraints.txt")
    import importlib.metadata

    import ray
    from packaging.requirements import Requirement

    assert pins["ray"] == ray.__version__
    installed = dict(line.split("==") for line in cluster.locked_requirements())
    assert {cluster._norm(k): v for k, v in installed.items()} == pins, \
        "constraints.txt is not the installed closure: `python pipelines/cluster.py lock`"
    meta = importlib.metadata.metadata("hivg")
    for text in meta.get_all("Requires-Dist"):
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": "cluster"}):
            assert req.specifier.contains(pins[cluster._norm(req.name)], prereleases=True), text


def test_trials_get_the_heads_private_mlflow_address():
    """The head starts MLflow on the address Ray announces for it (reachable from every
    node), writes MLFLOW_TRACKING_URI there, and `ray start --head` runs after it, in a
    shell that reads it (setup-node.sh's line in ~/.bashrc): jobs inherit it."""
    start = aws_config()["head_start_ray_commands"]
    assert start.index("bash ~/hivg/cluster/start-mlflow.sh") < \
        next(i for i, c in enumerate(start) if c.startswith("ray start --head"))
    script = (REPO / "cluster" / "start-mlflow.sh").read_text()
    assert 'ray.util.get_node_ip_address()' in script
    assert '--host "$ip"' in script and "127.0.0.1" not in script
    assert 'MLFLOW_TRACKING_URI=http://$ip:$port' in script
    assert '--artifacts-destination "$HIVG_STORAGE/mlartifacts"' in script
    assert "~/.hivg/*.env" in (REPO / "cluster" / "setup-node.sh").read_text()
    assert "--dashboard-host=127.0.0.1" in start[-1]


def test_gpu_node_types_advertise_the_gpus_the_studies_trials_request():
    types_ = aws_config()["available_node_types"]
    assert types_["head"]["resources"] == {"CPU": 0}  # no trial lands on the head
    gpu_types = {n: t for n, t in types_.items() if t["resources"].get("GPU")}
    for name, node in gpu_types.items():
        instance = node["node_config"]["InstanceType"]
        assert node["resources"] == {"CPU": CPUS_PER_INSTANCE[instance],
                                     "GPU": GPUS_PER_INSTANCE[instance]}, name
        spot = "InstanceMarketOptions" in node["node_config"]
        twin = types_[name.replace("-spot", "-ondemand") if spot else
                      name.replace("-ondemand", "-spot")]
        assert twin["resources"] == node["resources"]  # the fallback has the same shape
        assert twin["node_config"]["InstanceType"] == instance
        assert node["priority"] == (1 if spot else 0)
    studies = [load_study(p) for p in sorted((REPO / "search_spaces").glob("*.yaml"))]
    gpu_studies = [s for s in studies if s.resources.gpus_per_worker > 0]
    assert gpu_studies
    for study in gpu_studies:
        r = Resources(study.resources.workers, study.resources.cpus_per_worker,
                      study.resources.gpus_per_worker)
        driver = r.trial_bundle()
        # One node of some GPU type holds a worker and the trial's own process beside it.
        fits = [n for n, t in gpu_types.items()
                if t["resources"]["GPU"] >= r.gpus_per_worker
                and t["resources"]["CPU"] >= r.cpus_per_worker + driver.get("CPU", 0)]
        assert fits, f"{study.name}: no node type holds {r} and its driver {driver}"


def test_rays_aws_bootstrap_runs_against_moto_and_a_spot_worker_launches(tmp_path,
                                                                           monkeypatch):
    """Ray 2.60's bootstrap_aws and its node provider, unmodified, over HTTP to moto_server
    (managed IAM policies loaded): HOME is a temporary folder (the key pair's .pem lands
    there). The hivg-worker profile is made first, as docs/cluster.md tells a user to."""
    with running_s3_server(tmp_path / "moto.log") as server:
        for name in list(__import__("os").environ):
            if name.startswith("AWS_"):
                monkeypatch.delenv(name)
        for name, value in {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                            "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
                            "AWS_EC2_METADATA_DISABLED": "true",
                            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                            "AWS_CONFIG_FILE": str(tmp_path / "none"),
                            "HOME": str(tmp_path / "home")}.items():
            monkeypatch.setenv(name, value)
        (tmp_path / "home").mkdir()
        import boto3

        iam = boto3.client("iam", region_name=REGION)
        ec2 = boto3.client("ec2", region_name=REGION)
        iam.create_role(RoleName="hivg-worker", AssumeRolePolicyDocument=(
            REPO / "cluster" / "iam" / "ec2-trust.json").read_text())
        iam.put_role_policy(RoleName="hivg-worker", PolicyName="hivg-bucket", PolicyDocument=(
            REPO / "cluster" / "iam" / "worker-policy.json").read_text())
        iam.create_instance_profile(InstanceProfileName="hivg-worker")
        iam.add_role_to_instance_profile(InstanceProfileName="hivg-worker",
                                         RoleName="hivg-worker")

        from ray.autoscaler._private.aws import config as aws_bootstrap
        from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
        from ray.autoscaler._private.aws.utils import resource_cache
        from ray.autoscaler.tags import (TAG_RAY_LAUNCH_CONFIG, TAG_RAY_NODE_KIND,
                                         TAG_RAY_NODE_NAME, TAG_RAY_USER_NODE_TYPE)

        resource_cache.cache_clear()  # boto3 clients cached by a test before this one
        # Ray waits 15 s twice for IAM to propagate in AWS; moto is consistent at once.
        monkeypatch.setattr(aws_bootstrap, "time", types.SimpleNamespace(sleep=lambda s: None))
        # moto knows no Deep Learning AMI (nor resolve:ssm:): one of its own stands in.
        ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        config = aws_config()
        for node in config["available_node_types"].values():
            assert node["node_config"]["ImageId"].startswith("resolve:ssm:/aws/service/")
            node["node_config"]["ImageId"] = ami
        booted = aws_bootstrap.bootstrap_aws(cluster.check(config))

        role = iam.get_role(RoleName="ray-autoscaler-v1")["Role"]
        attached = {p["PolicyName"] for p in
                    iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]}
        assert attached == {"AmazonEC2FullAccess", "AmazonS3FullAccess"}
        profile = iam.get_instance_profile(InstanceProfileName="ray-autoscaler-v1")
        assert [r["RoleName"] for r in profile["InstanceProfile"]["Roles"]] == ["ray-autoscaler-v1"]
        assert booted["head_node"]["IamInstanceProfile"]["Arn"] == \
            profile["InstanceProfile"]["Arn"]
        key = booted["auth"]["ssh_private_key"]
        assert Path(key).expanduser().is_file() and str(tmp_path / "home") in \
            str(Path(key).expanduser())
        groups = ec2.describe_security_groups(GroupNames=["ray-autoscaler-hivg"])
        (group,) = groups["SecurityGroups"]
        ports = {(p.get("FromPort"), p.get("IpProtocol")) for p in group["IpPermissions"]}
        assert (22, "tcp") in ports  # SSH from outside
        (internal,) = [p for p in group["IpPermissions"] if p["IpProtocol"] == "-1"]
        assert [g["GroupId"] for g in internal["UserIdGroupPairs"]] == [group["GroupId"]]
        subnets = {s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}
        for name, node in booted["available_node_types"].items():
            assert set(node["node_config"]["SubnetIds"]) <= subnets, name
            assert node["node_config"]["SecurityGroupIds"] == [group["GroupId"]], name

        provider = AWSNodeProvider(booted["provider"], booted["cluster_name"])
        launched = {}
        for node_type in ("gpu1-spot", "gpu1-ondemand"):
            provider.create_node(booted["available_node_types"][node_type]["node_config"], {
                TAG_RAY_NODE_KIND: "worker", TAG_RAY_USER_NODE_TYPE: node_type,
                TAG_RAY_NODE_NAME: f"ray-hivg-{node_type}", TAG_RAY_LAUNCH_CONFIG: "test"}, 1)
            (instance,) = [i for r in ec2.describe_instances(Filters=[
                {"Name": f"tag:{TAG_RAY_USER_NODE_TYPE}", "Values": [node_type]}])["Reservations"]
                for i in r["Instances"]]
            launched[node_type] = instance
        spot, ondemand = launched["gpu1-spot"], launched["gpu1-ondemand"]
        assert spot.get("InstanceLifecycle") == "spot"
        assert ondemand.get("InstanceLifecycle") is None
        for instance in (spot, ondemand):
            assert instance["InstanceType"] == "g5.2xlarge"
            assert instance["IamInstanceProfile"]["Arn"].endswith("instance-profile/hivg-worker")
        provider.terminate_nodes([spot["InstanceId"], ondemand["InstanceId"]])


def test_iam_policies_name_what_the_nodes_do():
    worker = json.loads((REPO / "cluster" / "iam" / "worker-policy.json").read_text())
    actions = {a for s in worker["Statement"] for a in s["Action"]}
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= actions
    head = json.loads((REPO / "cluster" / "iam" / "head-policy.json").read_text())
    assert {"iam:PassRole", "ssm:GetParameters"} <= {
        a for s in head["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str)
                                               else s["Action"])}
    for node in aws_config()["available_node_types"].values():
        assert "AccessKey" not in yaml.safe_dump(node)
    text = AWS.read_text()
    assert not re.search(r"AKIA[A-Z0-9]{16}|aws_secret|SecretAccessKey", text)
    assert sys.modules.get("hivg")  # the library imported these without credentials
