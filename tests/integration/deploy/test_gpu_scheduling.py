"""GPU scheduling on a machine without GPUs: a `ray start` node that declares two GPUs, and the
switch that lets a process Ray gave a GPU compute on the CPU (FACEMASK_GPU_AS_CPU=1, set on the
node as a GPU node's environment would be set). Ray's placement is real: `--gpus-per-trial 0.5`
must run four trials at once on two GPUs, each told its GPU through CUDA_VISIBLE_DEVICES, and the
final retrain and test scoring must run on a GPU's share too, not in the driver."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from facemask.core.runtime import GPU_AS_CPU_ENV
from tests.integration.training.test_tune import SPACE
from tests.services import RayCluster, study_args

pytestmark = [
    pytest.mark.integration,
    pytest.mark.heavy(reason="four trials at once on a cluster of emulated GPU nodes"),
]


def test_half_a_gpu_per_trial_runs_four_trials_at_once_on_two_gpus(tiny_data, mlflow_server, tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="fm-ray-", dir="/tmp")), env)
    experiment = f"gpus-{tmp_path.name}"
    space = tmp_path / "space.yaml"
    good = SPACE["baseline"][0]
    space.write_text(yaml.safe_dump({"space": SPACE["space"], "baseline": [good] * 4}))
    try:
        cluster.start_head(num_cpus=4, params={"num-gpus": "2"}, env={GPU_AS_CPU_ENV: "1"})
        study = subprocess.run(
            [sys.executable, "-m", "facemask.cli", "tune"]
            + study_args(tiny_data, space, experiment, trials=4, epochs=1, final_epochs=1, no_promote=True)
            + ["--gpus-per-trial", "0.5", "--cpus-per-trial", "0.5", "--storage", str(tmp_path / "studies")],
            env={**env, "RAY_ADDRESS": cluster.address, "MLFLOW_TRACKING_URI": mlflow_server.uri},
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )
        assert study.returncode == 0, study.stdout[-3000:] + study.stderr[-3000:]
    finally:
        cluster.stop()
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    trials = [r for r in runs if "facemask.trial_id" in r.data.tags]
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    # The final retrain and the test scoring ran where a trial runs (the driver has no GPU): they finished.
    (final,) = [r for r in runs if r.info.run_name.endswith("-final")]
    assert (
        final.info.status == "FINISHED"
        and "test/mAP50" in next(r for r in runs if "facemask.study_path" in r.data.tags).data.metrics
    )
    # Each trial was given half of one GPU: two trials on each of the two.
    assert Counter(r.data.tags["facemask.gpus"] for r in trials) == {"0": 2, "1": 2}, [r.data.tags for r in trials]
    assert all('"GPU": 0.5' in r.data.tags["facemask.resources"] for r in trials)
    # All four at once: every trial started before the first one ended.
    assert max(r.info.start_time for r in trials) < min(r.info.end_time for r in trials)
