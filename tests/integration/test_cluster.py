"""A real two-node Ray cluster on one machine: `ray start` head + worker, token auth, `ray job submit`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.integration.test_tune import SPACE

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def make_cluster():
    from tests.services import RayCluster

    clusters = []

    def start(worker: bool) -> RayCluster:
        # Short path: Ray's unix sockets live under the temp dir and must stay under 108 bytes.
        root = Path(tempfile.mkdtemp(prefix="fm-ray-", dir="/tmp"))
        # The job's `python` is whatever PATH finds on the node: make it this environment's.
        env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        env.pop("RAY_ADDRESS", None)
        c = RayCluster(root, env)
        clusters.append(c)
        if worker:
            c.start_head(num_cpus=1, resources={"head": 1})
            c.add_node(num_cpus=2, resources={"trainer": 2})
            c.wait_for_nodes(2)
        else:
            c.start_head(num_cpus=2, resources={"head": 1})
        return c

    yield start
    for c in clusters:
        c.stop()


def submit_study(cluster, entrypoint: list[str], extra: list[str], tiny_data, mlflow_server, tmp_path, working_dir: bool):
    space = tmp_path / "space.yaml"
    good = SPACE["baseline"][0]
    space.write_text(yaml.safe_dump({"space": SPACE["space"], "baseline": [good, {**good, "lr0": 0.01}]}))
    experiment = f"cluster-{tmp_path.name}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": mlflow_server.uri, "YOLO_CONFIG_DIR": os.environ["YOLO_CONFIG_DIR"],
                                "YOLO_OFFLINE": "1", "FACEMASK_DEBUG": "1"}}
    ray = str(Path(sys.executable).with_name("ray"))
    command = [ray, "job", "submit", "--address", cluster.dashboard, "--runtime-env-json", json.dumps(runtime_env)]
    if working_dir:
        command += ["--working-dir", str(ROOT)]
    submit = subprocess.run(
        command + ["--", *entrypoint, "--data", str(tiny_data), "--model", "yolo26n.yaml", "--trials", "2",
                   "--epochs", "2", "--imgsz", "160", "--cpus-per-trial", "1", "--search-space", str(space),
                   "--metric", "cls_loss", "--mode", "min", "--grace-period", "2", "--storage", str(tmp_path / "studies"),
                   "--name", "study", "--experiment", experiment, *extra],
        env=cluster.env, capture_output=True, text=True, timeout=900,
    )
    assert submit.returncode == 0, submit.stdout[-6000:] + submit.stderr[-2000:]
    assert "succeeded" in submit.stdout + submit.stderr
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = next(r for r in runs if "facemask.study_path" in r.data.tags)
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and "facemask.trial_id" in r.data.tags]
    assert len(trials) == 2
    for run in trials:
        assert run.info.status == "FINISHED"
        assert {a.path for a in client.list_artifacts(run.info.run_id, "weights")} >= {"weights/best.pt"}
    assert len(list((tmp_path / "studies" / "study").glob("run_trial_*/checkpoint_*/last.pt"))) >= 2
    return trials


def test_job_submit_with_working_dir(make_cluster, tiny_data, mlflow_server, tmp_path):
    """The README's command: `ray job submit --working-dir . -- python jobs/tune.py ...` to a token-auth head."""
    cluster = make_cluster(worker=False)
    submit_study(cluster, ["python", "jobs/tune.py"], [], tiny_data, mlflow_server, tmp_path, working_dir=True)


def test_trials_pinned_to_the_second_node(make_cluster, tiny_data, mlflow_server, tmp_path):
    """Head + worker node; trials need the `trainer` resource that only the worker has.

    No --working-dir here: both nodes share this machine's Ray session folder, and the worker
    node unpacking the same package would replace the driver's working directory under it. A
    real cluster installs the package on every node (cluster.yaml), which is what this mirrors.
    """
    cluster = make_cluster(worker=True)
    trials = submit_study(cluster, ["python", str(ROOT / "jobs" / "tune.py")], ["--trial-resources", "trainer=1"],
                          tiny_data, mlflow_server, tmp_path, working_dir=False)
    for run in trials:
        assert json.loads(run.data.tags["facemask.resources"]).get("trainer") == 1
    assert len({r.data.tags["facemask.node_id"] for r in trials}) == 1


def test_job_submit_needs_the_token(make_cluster):
    cluster = make_cluster(worker=False)
    ray = str(Path(sys.executable).with_name("ray"))
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    env["HOME"] = str(Path(cluster.root))  # no ~/.ray/auth_token to fall back on
    denied = subprocess.run([ray, "job", "submit", "--address", cluster.dashboard, "--", "python", "-c", "print(1)"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert denied.returncode != 0
