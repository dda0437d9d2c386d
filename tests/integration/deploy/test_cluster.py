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

from tests.integration.training.test_tune import SPACE
from tests.services import study_args

pytestmark = [
    pytest.mark.integration,
    pytest.mark.heavy(reason="a two-node cluster whose jobs train studies on both nodes"),
]
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def two_nodes():
    """One head (1 CPU) and one worker node (2 CPUs, the `trainer` resource) for the module's jobs.

    Shared: each test submits a job of its own and reads its own experiment; none kills or
    reconfigures a node, so a cluster started per test would only add its start-up."""
    from tests.services import RayCluster

    # Short path: Ray's unix sockets live under the temp dir and must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="fm-ray-", dir="/tmp"))
    # The job's `python` is whatever PATH finds on the node: make it this environment's.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    cluster = RayCluster(root, env)
    try:
        cluster.start_head(num_cpus=1, resources={"head": 1})
        cluster.add_node(num_cpus=2, resources={"trainer": 2})
        cluster.wait_for_nodes(2)
        yield cluster
    finally:
        cluster.stop()


def submit_study(
    cluster,
    entrypoint: list[str],
    extra: list[str],
    tiny_data,
    mlflow_server,
    tmp_path,
    working_dir: bool,
    checkpoints: str = "study/run_trial_*/checkpoint_*/last.pt",
):
    space = tmp_path / "space.yaml"
    good = SPACE["baseline"][0]
    space.write_text(yaml.safe_dump({"space": SPACE["space"], "baseline": [good, {**good, "lr0": 0.01}]}))
    experiment = f"cluster-{tmp_path.name}"
    runtime_env = {
        "env_vars": {
            "MLFLOW_TRACKING_URI": mlflow_server.uri,
            "YOLO_CONFIG_DIR": os.environ["YOLO_CONFIG_DIR"],
            "YOLO_OFFLINE": "1",
            "FACEMASK_DEBUG": "1",
        }
    }
    ray = str(Path(sys.executable).with_name("ray"))
    command = [ray, "job", "submit", "--address", cluster.dashboard, "--runtime-env-json", json.dumps(runtime_env)]
    if working_dir:
        command += ["--working-dir", str(ROOT)]
    submit = subprocess.run(
        command
        + [
            "--",
            *entrypoint,
            *study_args(tiny_data, space, experiment, trials=2, epochs=2, grace_period=2, name="study"),
            *["--storage", str(tmp_path / "studies")],
            *extra,
        ],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert submit.returncode == 0, submit.stdout[-6000:] + submit.stderr[-2000:]
    assert "succeeded" in submit.stdout + submit.stderr
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = next(r for r in runs if "facemask.study_path" in r.data.tags)
    trials = [
        r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and "facemask.trial_id" in r.data.tags
    ]
    assert len(trials) == 2
    for run in trials:
        assert run.info.status == "FINISHED"
        assert {a.path for a in client.list_artifacts(run.info.run_id, "weights")} >= {"weights/best.pt"}
    assert len(list((tmp_path / "studies").glob(checkpoints))) >= 2
    return trials


def test_readme_jobs_from_an_empty_home_keep_their_results(synth_source, tiny_data, tmp_path):
    """The local recipe of docs/jobs-and-clusters.md, from a HOME with no Ray token and no MLflow setting.

    The first job is a study of data at an absolute path outside ~/facemask, which does not
    exist yet: it must create it for its store.

    `ray get-auth-token --generate`, `ray start --head`, then `ray job submit --working-dir .` of
    jobs/prepare.py with a relative --out and jobs/tune.py with the defaults: the results must
    outlive Ray's temporary copy of the working dir, under ~/facemask, and be found from a
    fresh process as the job's last lines say.
    """
    from tests.services import RayCluster

    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "RAY_AUTH_MODE": "token",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI", "FACEMASK_HOME"):
        env.pop(key, None)
    ray = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    assert (home / ".ray" / "auth_token").is_file()
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="fm-ray-", dir="/tmp")), env)
    try:
        cluster.start_head(num_cpus=2, resources={"head": 1})
        runtime_env = json.dumps({"env_vars": {"YOLO_CONFIG_DIR": os.environ["YOLO_CONFIG_DIR"], "YOLO_OFFLINE": "1"}})

        def submit(*args: str) -> str:
            run = cluster.submit("--working-dir", str(ROOT), "--runtime-env-json", runtime_env, "--", "python", *args)
            assert run.returncode == 0 and "succeeded" in run.stdout + run.stderr, (
                run.stdout[-6000:] + run.stderr[-2000:]
            )
            return run.stdout

        results = home / "facemask"
        assert not results.exists()
        space = tmp_path / "space.yaml"
        space.write_text(yaml.safe_dump({"space": SPACE["space"], "baseline": SPACE["baseline"][:2]}))
        studied = submit("jobs/tune.py", *study_args(tiny_data, space, "jobs", trials=2, epochs=1, name="study"))
        db = results / "mlflow.db"
        footer = studied.split("results:")[-1]
        assert f"MLflow:     sqlite:///{db}  (experiment 'jobs', run " in footer
        assert f"study:      {results / 'runs' / 'tune' / 'study'}" in footer
        assert f"mlflow ui --backend-store-uri sqlite:///{db}" in footer
        assert (
            f"MLFLOW_TRACKING_URI=sqlite:///{db} facemask serve --model-uri models:/facemask-detector@champion"
            in footer
        )
        assert (results / "runs" / "tune" / "study").is_dir()
        assert not list(Path(cluster.root).rglob("mlflow.db")), "a store was written inside Ray's session folder"

        prepared = submit(
            "jobs/prepare.py", "--source", str(synth_source), "--out", "data/yolo", "--engine", "local", "--no-plots"
        )
        data_yaml = results / "data" / "yolo" / "data.yaml"
        assert data_yaml.is_file()
        assert f"data.yaml:  {data_yaml}" in prepared.split("results:")[-1]

        # A fresh process outside the job, pointed where the footer says, finds the study and the champion
        # the way `facemask serve` does (resolve_model downloads the version's weights).
        code = (
            "import json\n"
            "from mlflow import MlflowClient\n"
            "from facemask.detection.detector import resolve_model\n"
            "from facemask.tracking import default_tracking_uri\n"
            "c = MlflowClient(default_tracking_uri())\n"
            "runs = c.search_runs([c.get_experiment_by_name('jobs').experiment_id])\n"
            "trials = [r for r in runs if 'facemask.trial_id' in r.data.tags]\n"
            "info = resolve_model('models:/facemask-detector@champion', tracking_uri=default_tracking_uri())\n"
            "print(json.dumps({'trials': len(trials), 'finished': sum(r.info.status == 'FINISHED' for r in trials),\n"
            "  'weights': [a.path for r in trials for a in c.list_artifacts(r.info.run_id, 'weights')],\n"
            "  'champion': info.version, 'model_files': [info.weights.rsplit('/', 1)[-1]]}))\n"
        )
        found = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"},
        )
        assert found.returncode == 0, found.stderr[-3000:]
        seen = json.loads(found.stdout.strip().splitlines()[-1])
        assert seen["trials"] == 2 and seen["finished"] == 2
        assert seen["weights"].count("weights/best.pt") == 2
        assert seen["champion"] == "1" and "best.pt" in seen["model_files"]
    finally:
        cluster.stop()


def test_trials_pinned_to_the_second_node(two_nodes, tiny_data, mlflow_server, tmp_path):
    """Head + worker node; trials need the `trainer` resource that only the worker has.

    No --working-dir here: both nodes share this machine's Ray session folder, and the worker
    node unpacking the same package would replace the driver's working directory under it. A
    real cluster installs the package on every node (cluster.yaml), which is what this mirrors.
    """
    trials = submit_study(
        two_nodes,
        ["python", str(ROOT / "jobs" / "tune.py")],
        ["--trial-resources", "trainer=1"],
        tiny_data,
        mlflow_server,
        tmp_path,
        working_dir=False,
    )
    for run in trials:
        assert json.loads(run.data.tags["facemask.resources"]).get("trainer") == 1
    assert len({r.data.tags["facemask.node_id"] for r in trials}) == 1


def test_a_study_whose_trials_are_each_trained_by_two_ray_train_workers(two_nodes, tiny_data, mlflow_server, tmp_path):
    """Head (1 CPU) + worker node (2 CPUs): each trial is one model trained by two workers,
    placed by Ray Train wherever the CPUs are, reporting every epoch to Tune through rank 0."""
    trials = submit_study(
        two_nodes,
        ["python", str(ROOT / "jobs" / "tune.py")],
        ["--cpus-per-trial", "2", "--ray-workers-per-trial", "2"],
        tiny_data,
        mlflow_server,
        tmp_path,
        working_dir=False,
        checkpoints="study-yolo/*/ray-train/*/checkpoint_*/last.pt",
    )
    client = MlflowClient(mlflow_server.uri)
    for run in trials:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/cls_loss")] == [1, 2]
        log = tmp_path / "studies" / "study-yolo" / run.data.tags["facemask.trial_id"] / "ray-train" / run.info.run_name
        epochs = [json.loads(line) for line in (log / "ranks.jsonl").read_text().splitlines()]
        assert [e["epoch"] for e in epochs] == [1, 2]
        for entry in epochs:
            assert len(entry["ranks"]) == 2 and len({r["weights_sha256"] for r in entry["ranks"]}) == 1


def test_job_submit_needs_the_token(two_nodes):
    cluster = two_nodes
    ray = str(Path(sys.executable).with_name("ray"))
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    env["HOME"] = str(Path(cluster.root))  # no ~/.ray/auth_token to fall back on
    denied = subprocess.run(
        [ray, "job", "submit", "--address", cluster.dashboard, "--", "python", "-c", "print(1)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert denied.returncode != 0
