"""Offline checks of cluster.yaml against the Ray cluster launcher's own schema.

`ray up` runs `prepare_config`, then asks AWS for the CPUs and GPUs of each instance type
(`fillout_available_node_types_resources`), then `validate_config` (Ray 2.60,
ray/autoscaler/_private/commands.py). These tests skip the AWS step, which only fills in the
resources that a node type does not declare, and every node type in cluster.yaml declares them.
Both functions are private API in ray.autoscaler._private.util. `prepare_config` merges the file
into the AWS defaults shipped with Ray, so the checks look at the merged config that the launcher
uses. The rest of the AWS bootstrap (IAM role, subnets, security group, default AMI) is not
covered here.
"""

import copy
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from ray_iet.resources import resolve_shard_resources

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
GPU_WORKER = "ray.worker.gpu"
DEFAULT_SHARDS = 4


@pytest.fixture
def no_network(monkeypatch):
    """Make any connection attempt or name lookup in the test raise."""

    def reject_connection(*args, **kwargs):
        raise AssertionError(f"network access during an offline check: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", reject_connection)
    monkeypatch.setattr(socket.socket, "connect_ex", reject_connection)
    monkeypatch.setattr(socket, "create_connection", reject_connection)
    monkeypatch.setattr(socket, "getaddrinfo", reject_connection)


@pytest.fixture
def raw_config():
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def prepared(raw_config, no_network):
    config = prepare_config(raw_config)
    validate_config(config)
    return config


def test_cluster_yaml_passes_ray_schema(raw_config, no_network):
    config = prepare_config(raw_config)
    validate_config(config)
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in config["available_node_types"]


def test_unknown_node_type_key_rejected(raw_config):
    broken = copy.deepcopy(raw_config)
    broken["available_node_types"][GPU_WORKER]["gpus"] = 1
    with pytest.raises(jsonschema.ValidationError) as caught:
        validate_config(prepare_config(broken))
    assert "'gpus' was unexpected" in caught.value.message
    assert list(caught.value.path) == ["available_node_types", GPU_WORKER]


def test_wrong_max_workers_type_rejected(raw_config):
    broken = copy.deepcopy(raw_config)
    broken["max_workers"] = "four"
    with pytest.raises(jsonschema.ValidationError) as caught:
        validate_config(prepare_config(broken))
    assert "is not of type 'integer'" in caught.value.message
    assert list(caught.value.path) == ["max_workers"]


def test_min_workers_above_global_max_rejected(raw_config):
    # Scaling to more shards means raising both the worker type's counts and max_workers.
    broken = copy.deepcopy(raw_config)
    broken["available_node_types"][GPU_WORKER]["min_workers"] = raw_config["max_workers"] + 1
    broken["available_node_types"][GPU_WORKER]["max_workers"] = raw_config["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        validate_config(prepare_config(broken))


def test_gpu_worker_declares_gpu(prepared):
    worker = prepared["available_node_types"][GPU_WORKER]
    assert worker["resources"]["GPU"] == 1
    assert worker["resources"]["CPU"] >= 1
    assert worker["node_config"]["InstanceType"].startswith("g")


def test_gpu_workers_present_at_job_start(prepared):
    # The run sizes its shards from the resources the cluster has when the job starts, so the
    # GPU workers must not wait for the autoscaler.
    worker = prepared["available_node_types"][GPU_WORKER]
    assert worker["min_workers"] == worker["max_workers"]
    assert worker["min_workers"] >= DEFAULT_SHARDS


def test_default_shards_fit_one_worker_each(prepared):
    totals = {"CPU": 0.0, "GPU": 0.0}
    for name, node_type in prepared["available_node_types"].items():
        count = 1 if name == prepared["head_node_type"] else node_type["min_workers"]
        for resource in totals:
            totals[resource] += count * node_type["resources"].get(resource, 0)

    per_shard = resolve_shard_resources(totals, DEFAULT_SHARDS)

    worker = prepared["available_node_types"][GPU_WORKER]["resources"]
    assert per_shard.num_gpus == 1
    assert per_shard.num_cpus <= worker["CPU"]


def test_head_dashboard_bound_to_loopback(prepared):
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--head" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start


def test_setup_installs_mounted_tree(prepared):
    assert prepared["file_mounts"]["~/ray-iet"] == "."
    assert "pip install -e ~/ray-iet" in prepared["head_setup_commands"]
    assert "pip install -e ~/ray-iet" in prepared["worker_setup_commands"]
    # The autoscaler on the head launches EC2 instances through boto3.
    assert any("boto3" in command for command in prepared["head_setup_commands"])


def test_rsync_skips_ignored_files(prepared):
    assert ".gitignore" in prepared["rsync_filter"]
    assert "**/.git" in prepared["rsync_exclude"]
