"""cluster.yaml: valid against the schema shipped in the `ray` package, and safe by default."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_valid_against_ray_schema(cluster):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)


def test_token_auth_on_every_node(cluster):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cluster[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert any("auth_token" in target for target in cluster["file_mounts"]), "the token must reach every node"


def test_every_node_type_names_its_security_group(cluster):
    """Ray's AWS provider creates a security group for any node type that names none, and that
    group lets SSH in from 0.0.0.0/0 whatever rules the config adds (ray 2.60's
    autoscaler/_private/aws/config.py). With SecurityGroupIds on every node type it creates none."""
    groups = {name: t["node_config"].get("SecurityGroupIds") for name, t in cluster["available_node_types"].items()}
    assert all(groups.values()), groups
    assert len({tuple(g) for g in groups.values()}) == 1, "head and workers share one group: Ray's ports between them"
    assert "security_group" not in cluster["provider"]  # its IpPermissions would only add to Ray's own group


def test_dashboard_never_public(cluster):
    commands = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in commands
    assert "0.0.0.0" not in yaml.safe_dump(cluster)


def test_setup_installs_this_package(cluster):
    assert any(re.search(r"pip install -e '?/home/ray/facemask", c) for c in cluster["setup_commands"])
    assert cluster["file_mounts"]["/home/ray/facemask"] == "."


def test_gpu_workers_declare_gpus(cluster):
    head = cluster["head_node_type"]
    workers = {k: v for k, v in cluster["available_node_types"].items() if k != head}
    assert workers
    for name, node in workers.items():
        assert node["resources"].get("GPU", 0) >= 1, name
        assert node["max_workers"] >= node["min_workers"]
    assert "GPU" not in cluster["available_node_types"][head]["resources"]


def test_image_matches_pinned_ray(cluster):
    assert cluster["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    assert "gpu" in cluster["docker"]["image"]


def test_every_node_starts_with_the_serve_settings_the_proxy_guard_and_haproxy(cluster):
    """A node's Serve proxy and HAProxy read these from the environment of `ray start`, nowhere else."""
    from ray._common.utils import import_attr

    from facemask.core.runtime import HAPROXY_ENV, PROXY_ENV, SERVE_ENV
    from facemask.serving.haproxy_guard import BINARY_ENV, SCRIPT

    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cluster[key] if "ray start" in c)
        for name, value in {**SERVE_ENV, **PROXY_ENV, **HAPROXY_ENV}.items():
            assert (f'{name}="{value}"' if " " in value else f"{name}={value}") in start, (key, name)
        # HAProxy as facemask-haproxy, found on the node's PATH where the package installed it.
        assert f'{BINARY_ENV}="$(command -v {SCRIPT})"' in start, key
    assert callable(import_attr(PROXY_ENV["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"]))


def test_haproxy_settings_are_ray_knobs_and_cluster_yaml_lists_them():
    """HAPROXY_ENV only works while Ray reads these names; cluster.yaml tells nodes the same values."""
    import inspect

    from ray.serve._private import constants

    from facemask.core.runtime import HAPROXY_ENV

    source = inspect.getsource(constants)
    text = (ROOT / "cluster.yaml").read_text()
    for name, value in HAPROXY_ENV.items():
        assert f'"{name}"' in source, f"Ray no longer reads {name}"
        assert f'{name}="{value}"' in text if " " in value else f"{name}={value}" in text, name


COMMANDS = ("setup_commands", "head_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def test_no_placeholder_in_a_command_every_value_comes_from_the_checked_file(cluster):
    """A placeholder written into a command itself passes the cluster.env check and `ray up`, and
    fails later (an artifact upload to a bucket that does not exist): every account value is a
    variable of ~/.facemask/cluster.env, which the nodes refuse to set up with a CHANGE-ME in."""
    checks = [c for c in cluster["setup_commands"] if c.startswith("if grep -q CHANGE-ME")]
    assert len(checks) == 1
    for key in COMMANDS:
        for command in cluster[key]:
            assert command in checks or "CHANGE-ME" not in command, (key, command[:200])


def test_the_shared_folder_is_mounted_on_every_machine_and_handed_to_its_container(cluster):
    """The documented job reads and writes /mnt/shared on every node: each machine mounts it
    before its container starts, and the container gets it."""
    assert "-v /mnt/shared:/mnt/shared" in cluster["docker"]["run_options"]
    assert any("/mnt/shared" in c and "mount -t nfs4" in c for c in cluster["initialization_commands"])
    docs = (ROOT / "docs" / "jobs-and-clusters.md").read_text()
    job = re.search(r"python jobs/study\.py --source (\S+) --out (\S+)", docs)
    assert job and all(path.startswith("/mnt/shared/") for path in job.groups()), job


def run_on_the_host(command: str, tmp_path: Path, replace: tuple[str, str] | None = None):
    """The command as the autoscaler runs an initialization command on a machine (`bash --login
    -c -i`), with stand-ins for sudo and mountpoint that record what they were asked."""
    import os
    import subprocess

    tools = tmp_path / "bin"
    tools.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    (tools / "sudo").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (tools / "mountpoint").write_text("#!/bin/sh\nexit 1\n")  # not mounted yet
    for tool in tools.iterdir():
        tool.chmod(0o755)
    if replace:
        command = command.replace(*replace)
    # A login shell takes PATH from /etc/profile; the machine's own profile puts the stand-ins first.
    (tmp_path / ".bash_profile").write_text(f'export PATH="{tools}:$PATH"\n')
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    done = subprocess.run(["bash", "--login", "-c", "-i", command], env=env, capture_output=True, text=True)
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_a_shared_folder_left_at_its_placeholder_stops_ray_up_before_anything_is_mounted(cluster, tmp_path):
    (command,) = cluster["initialization_commands"]
    done, calls = run_on_the_host(command, tmp_path)
    assert done.returncode == 1 and calls == []
    assert "cluster.yaml: set SHARED in initialization_commands" in done.stderr


def test_a_shared_folder_with_its_address_is_mounted_and_given_to_rays_user(cluster, tmp_path):
    (command,) = cluster["initialization_commands"]
    export = "fs-0123abcd.efs.us-west-2.amazonaws.com:/"
    done, calls = run_on_the_host(command, tmp_path, replace=("fs-CHANGE-ME.efs.us-west-2.amazonaws.com:/", export))
    assert done.returncode == 0, done.stderr
    assert calls[0] == "mkdir -p /mnt/shared"
    assert calls[1].startswith("mount -t nfs4 ") and calls[1].endswith(f"{export} /mnt/shared")
    assert calls[2] == "chown 1000:100 /mnt/shared"
