"""kubernetes/rayjob-tune.yaml, then kubernetes/rayjob-retrain.yaml (jobs/retrain.py, the loop's
retrain job), run here as KubeRay runs them: a `ray start` head and GPU worker with the
manifest's rayStartParams, resources and environment (token auth on, the MLflow login from the
Secret), kubernetes/mlflow.yaml's server as the MLflow Service, and the submitter pod's bash
script built from `spec.entrypoint` exactly as KubeRay builds it (tests/kuberay.py).

Mapped to this machine, and nothing else: the pods' volumes (/source, /results) and the image's
/home/ray/facemask to folders here, http://mlflow:5000 to the server's loopback address, the
dashboard to loopback, and the jobs' size: each entrypoint is pasted whole, then small options
are appended to it (the last value of an option wins), so no GPU and no download are needed.
Not run here: Kubernetes itself (pods, the Services' DNS, KubeRay's controller)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from facemask.core.lifecycle import stop_process_group
from tests.integration.training.test_tune import SPACE
from tests.kuberay import (
    SECRET,
    container,
    container_env,
    manifest,
    on_this_machine,
    ray_start_params,
    start_mlflow_deployment,
    submitter_script,
    the_secret,
)
from tests.services import RayCluster, study_args, wait_http

pytestmark = [
    pytest.mark.integration,
    pytest.mark.heavy(reason="a head and a GPU worker node, the MLflow Deployment, a study and a retrain as Ray jobs"),
]
ROOT = Path(__file__).resolve().parents[3]


def aliases(store: MlflowClient) -> list[str]:
    return list(store.get_registered_model("facemask-detector").aliases)


def labelled_folder(source: Path, out: Path, names: list[str]) -> Path:
    """Some of `source`'s images as a labeller returns them (a VOC folder), renamed: new photos."""
    for kind in ("annotations", "images"):
        (out / kind).mkdir(parents=True)
    for name in names:
        image = next((source / "images").glob(f"{name}.*"))
        shutil.copy(image, out / "images" / f"new-{image.name}")
        xml = (source / "annotations" / f"{name}.xml").read_text()
        (out / "annotations" / f"new-{name}.xml").write_text(xml.replace("<filename>", "<filename>new-", 1))
    return out


def node_env(group: dict, paths: dict[str, str], mlflow_url: str) -> dict[str, str]:
    """A group's container environment, its paths and the MLflow Service's address mapped here."""
    env = container_env(container(group), {**the_secret(), **SECRET})
    return {key: on_this_machine(value, paths, {"http://mlflow:5000": mlflow_url}) for key, value in env.items()}


@pytest.mark.over_budget(
    reason="a RayJob's whole life is the guarantee: its head and GPU worker started as KubeRay starts them, "
    "the MLflow Deployment, prepare and a 2-trial study as one job, then the job retried from where it stopped, "
    "then the retrain RayJob on the same cluster; each part already runs at its smallest (1 epoch, no final retrain)"
)
def test_the_rayjob_runs_prepare_and_the_study_as_one_job_and_a_retry_never_starts_over(synth_source, tmp_path):
    rayjob = manifest("rayjob-tune.yaml", "RayJob")
    spec = rayjob["spec"]["rayClusterSpec"]
    results, home = tmp_path / "results", tmp_path / "home"
    results.mkdir()
    home.mkdir()
    paths = {"/home/ray/facemask": str(ROOT), "/source": str(synth_source), "/results": str(results)}
    volume = tmp_path / "mlflow-volume"
    volume.mkdir()
    mlflow, mlflow_url, mlflow_log = start_mlflow_deployment(volume, {**the_secret(), **SECRET})
    base = {
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "YOLO_CONFIG_DIR": os.environ["YOLO_CONFIG_DIR"],
        "YOLO_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    ray = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray, "get-auth-token", "--generate"], env=base, check=True, capture_output=True, timeout=60)
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="fm-ray-", dir="/tmp")), base)
    try:
        wait_http(f"{mlflow_url}/health", timeout=120, proc=mlflow)
        head = spec["headGroupSpec"]
        # The dashboard listens on loopback here; every other parameter is the manifest's.
        params = {k: v for k, v in ray_start_params(head).items() if k != "dashboard-host"}
        cluster.start_head(params=params, env=node_env(head, paths, mlflow_url))
        for group in spec["workerGroupSpecs"]:
            cluster.add_node(params=ray_start_params(group), env=node_env(group, paths, mlflow_url))
        cluster.wait_for_nodes(1 + len(spec["workerGroupSpecs"]))

        space = tmp_path / "space.yaml"
        space.write_text(yaml.safe_dump({"space": SPACE["space"], "baseline": SPACE["baseline"][:2]}))
        small = study_args(Path("data/yolo/data.yaml"), space, "rayjob", trials=2, epochs=1, final_epochs=0)
        small += ["--gpus-per-trial", "0"]  # no CUDA here; the worker still declares the manifest's GPU
        job = {**rayjob, "spec": {**rayjob["spec"], "entrypoint": rayjob["spec"]["entrypoint"] + " " + " ".join(small)}}
        job["spec"]["entrypoint"] = on_this_machine(job["spec"]["entrypoint"], paths)

        submitter_dir = tmp_path / "submitter"
        submitter_dir.mkdir()

        def submitter(job_id: str) -> subprocess.CompletedProcess:
            # The submitter pod: its own environment (the token, no volume, no MLflow), KubeRay's script.
            script = submitter_script(job, cluster.dashboard, job_id)
            return subprocess.run(
                ["/bin/bash", "-c", script], env=base, capture_output=True, text=True, timeout=1200, cwd=submitter_dir
            )

        first = submitter("facemask-tune-first")
        out = first.stdout + first.stderr
        assert first.returncode == 0, out[-5000:]
        status = cluster.job("status", "facemask-tune-first")
        assert "Job 'facemask-tune-first' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr
        logs = cluster.job("logs", "facemask-tune-first").stdout
        # Both steps ran inside the one Ray job, on the cluster, with the pods' volume.
        assert f"data.yaml: {results / 'data' / 'yolo' / 'data.yaml'}" in logs, logs[-3000:]
        assert f"study:      {results / 'runs' / 'tune' / 'facemask-study'}" in logs, logs[-3000:]
        assert "study " in logs and ": new" in logs
        # The submitter only submitted and followed: nothing ran in it; and the pods logged to the server.
        assert not list(submitter_dir.iterdir()) and not (home / "facemask").exists()
        assert not list(results.rglob("mlflow.db")), "a pod logged to a local store instead of the MLflow Service"

        store = MlflowClient(mlflow_url, registry_uri=mlflow_url)  # never a registry an earlier test named
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_USERNAME", SECRET["MLFLOW_TRACKING_USERNAME"])
            mp.setenv("MLFLOW_TRACKING_PASSWORD", SECRET["MLFLOW_TRACKING_PASSWORD"])
            experiment = store.get_experiment_by_name("rayjob")
            runs = store.search_runs([experiment.experiment_id])
            parents = [r for r in runs if "facemask.study_path" in r.data.tags]
            trials = [r for r in runs if "facemask.trial_id" in r.data.tags]
            assert len(parents) == 1 and parents[0].info.status == "FINISHED", [r.info.run_name for r in runs]
            assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
            versions = len(store.search_model_versions("name='facemask-detector'"))

            # The submitter pod retried (same submission id): the job exists, so it only follows it.
            again = submitter("facemask-tune-first")
            assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
            listed = cluster.job("list").stdout
            assert len(re.findall(r"submission_id='facemask-tune-first'", listed)) == 1, listed[-3000:]

            # The RayJob retried (backoffLimit: a new submission): the study is found finished, not run again.
            retried = submitter("facemask-tune-retry")
            logs = cluster.job("logs", "facemask-tune-retry").stdout
            assert retried.returncode == 0, (retried.stdout + retried.stderr)[-3000:]
            assert "has finished" in logs and "nothing to run again" in logs, logs[-3000:]
            runs = store.search_runs([experiment.experiment_id])
            assert len(runs) == 3, [r.info.run_name for r in runs]
            assert len(store.search_model_versions("name='facemask-detector'")) == versions

            # The retrain RayJob on the same cluster: new labels, the study's data as the version it keeps.
            retrain = manifest("rayjob-retrain.yaml", "RayJob")
            names = sorted(p.stem for p in (synth_source / "annotations").glob("*.xml"))[:6]
            labelled_folder(synth_source, results / "labelled", names)
            small = ["--weights", "yolo26n.yaml", "--imgsz", "160", "--epochs", "1", "--batch", "8"]
            small += ["--gpus-per-worker", "0", "--cpus-per-worker", "1", "plots=False"]
            entrypoint = on_this_machine(retrain["spec"]["entrypoint"] + " " + " ".join(small), paths)
            job = {**retrain, "spec": {**retrain["spec"], "entrypoint": entrypoint}}
            done = subprocess.run(
                ["/bin/bash", "-c", submitter_script(job, cluster.dashboard, "facemask-retrain")],
                env=base, capture_output=True, text=True, timeout=1200, cwd=submitter_dir,
            )  # fmt: skip
            logs = cluster.job("logs", "facemask-retrain").stdout
            assert done.returncode == 0, (done.stdout + done.stderr + logs)[-5000:]
            lines = logs.strip().splitlines()
            outcome = json.loads(lines[-1])
            # The merge: the base set and the labelled folder, every image of each, linked.
            merged = next(line for line in lines if "merged: " in line)
            merged = json.loads(merged.split("merged: ", 1)[1].rsplit(" images linked", 1)[0])
            images = len(list((synth_source / "annotations").glob("*.xml")))
            assert merged == {str(synth_source): images, str(results / "labelled"): 6}, merged
            assert outcome["data"] == str(results / "data" / "retrain" / "data" / "data.yaml"), logs[-3000:]
            kept = json.loads((results / "data" / "retrain" / "data" / "manifest.json").read_text())["kept_splits"]
            assert kept["added"]["test"] == 0 and sum(kept["added"].values()) == 6
            version = outcome["challenger"].rsplit("/", 1)[1]
            holders = {a: store.get_model_version_by_alias("facemask-detector", a).version for a in aliases(store)}
            expected = {"champion": "champion", "canary": "challenger"}.get(outcome["outcome"])
            assert (holders.get(expected) == version) if expected else version not in holders.values(), (
                outcome,
                holders,
            )
            if outcome["outcome"] == "refused":
                assert f"not promoted: {outcome['reason']}" in logs and outcome["reason"]
            if outcome["outcome"] == "canary":  # the champion stays until a promotion without --canary
                assert holders["champion"] != version, holders
            # Both versions scored on the same test photos: the gate compared them, paired.
            challenger = store.get_model_version("facemask-detector", version)
            champion = store.get_model_version("facemask-detector", holders["champion"])
            assert challenger.tags["test.data.split"] == champion.tags["test.data.split"], (challenger, champion)
    finally:
        cluster.stop()
        stop_process_group(mlflow, grace_s=20)
        print(mlflow_log.read_text()[-2000:])
