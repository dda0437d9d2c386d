"""Ray Tune studies on tiny generated data: ASHA, nested runs, crash retry, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from facemask.training.importance import MIN_TRIALS
from facemask.training.space import load_search_space
from facemask.training.tune import StudyConfig, tune
from tests.services import study_args

pytestmark = [
    pytest.mark.integration,
    pytest.mark.heavy(reason="studies of trials trained side by side, crashed and resumed"),
]
ROOT = Path(__file__).resolve().parents[3]

# Three fixed trials (Optuna's points_to_evaluate): one that learns and two whose learning
# rate is ~0, judged on validation cls loss, so ASHA has a real reason to stop the two.
# nbs=8 makes every batch an optimizer step on this tiny set; no warmup, no mosaic.
SPACE = {
    "space": {
        "lr0": {"type": "loguniform", "low": 1e-9, "high": 0.05},
        "optimizer": {"type": "choice", "values": ["SGD"]},
        "warmup_epochs": {"type": "choice", "values": [0.0]},
        "nbs": {"type": "choice", "values": [8]},
        "mosaic": {"type": "choice", "values": [0.0]},
    },
    "baseline": [
        {"lr0": 0.02, "optimizer": "SGD", "warmup_epochs": 0.0, "nbs": 8, "mosaic": 0.0},
        {"lr0": 1e-9, "optimizer": "SGD", "warmup_epochs": 0.0, "nbs": 8, "mosaic": 0.0},
        {"lr0": 1e-9, "optimizer": "SGD", "warmup_epochs": 0.0, "nbs": 8, "mosaic": 0.0},
    ],
}


@pytest.fixture()
def space_file(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


def child_runs(tracking_uri: str, parent_run_id: str):
    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    return client, client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")


def test_unknown_search_key_lists_valid_ones(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"space": {"learning_rate": {"type": "uniform", "low": 0, "high": 1}}}))
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'learning_rate'; valid: lr0, lrf"):
        load_search_space(bad)
    space, baseline = load_search_space()
    assert {"lr0", "optimizer", "box", "cls", "mosaic", "mixup", "copy_paste", "close_mosaic"} <= set(space)
    assert baseline[0]["lr0"] == 0.01 and baseline[0]["mosaic"] == 1.0


def test_study_asha_nested_runs_and_crash_retry(tiny_data, tracking, tmp_path, space_file, ray_local):
    marker = tmp_path / "crashed-trial"

    def crash_once(trainer):
        from ray import tune as rt

        if trainer.epoch == 1 and not marker.exists():
            marker.write_text(rt.get_context().get_trial_id())
            raise RuntimeError("injected crash after epoch 2")

    name = f"tune-{tracking['experiment']}"
    cfg = StudyConfig(
        data=tiny_data,
        model="yolo26n.yaml",
        trials=3,
        epochs=3,
        imgsz=160,
        batch=8,
        search_space=space_file,
        cpus_per_trial=1,
        max_concurrent=1,
        storage=str(tmp_path / "studies"),
        name="asha",
        metric="cls_loss",
        mode="min",
        grace_period=1,
        reduction_factor=2,
        max_failures=2,
        experiment=tracking["experiment"],
        registered_model=name,
        tracking_uri=tracking["uri"],
    )
    result = tune(cfg, trial_callbacks={"on_fit_epoch_end": [crash_once]})

    assert result.counts["failed"] == 0
    assert result.counts["stopped_early"] >= 1, result.trials
    assert result.counts["finished"] >= 1
    crashed = marker.read_text()
    client, runs = child_runs(tracking["uri"], result.parent_run_id)
    by_trial = {r.data.tags["facemask.trial_id"]: r for r in runs}
    assert sorted(by_trial) == sorted(t["trial_id"] for t in result.trials)  # one run per trial, no more
    expected = {"finished": "FINISHED", "stopped_early": "KILLED", "failed": "FAILED"}
    for trial in result.trials:
        run = by_trial[trial["trial_id"]]
        assert run.data.tags["facemask.trial_status"] == trial["status"]
        assert run.info.status == expected[trial["status"]]
    # the crashed trial resumed from its epoch-2 checkpoint: each epoch logged once, all three there
    steps = sorted(m.step for m in client.get_metric_history(by_trial[crashed].info.run_id, "val/cls_loss"))
    assert steps == [1, 2, 3]
    assert next(t for t in result.trials if t["trial_id"] == crashed)["status"] == "finished"

    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert "scheduler.type" in parent.data.params and parent.data.params["searcher.type"] == "Optuna TPE"
    plots = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert plots == {"plots/objective_per_trial.png", "plots/objective_vs_params.png"}
    # which settings mattered: too few trials for fANOVA, and the parent run says how many more
    scored = sum(1 for t in result.trials if t["objective"] == t["objective"])
    assert parent.data.tags["facemask.importance"] == (
        f"which settings mattered: not shown, {scored} scored trials, {MIN_TRIALS - scored} more needed"
    )
    assert "importance.json" in {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert result.version == "1" and result.promoted
    assert "test_mAP50-95" in client.get_model_version(name, "1").tags
    assert set(result.test) == {"precision", "recall", "mAP50", "mAP50-95"}
    # every test score of the study comes with its bootstrap interval, logged on the parent run too
    assert {"mAP50", "mAP50-95"} <= set(result.test_intervals) and result.test_objects > 0
    for key, (low, high) in result.test_intervals.items():
        assert low <= result.test[key] + 1e-9 and result.test[key] <= high + 1e-9, (key, low, high)
        assert parent.data.metrics[f"test/{key}_low"] == pytest.approx(low)


def test_interrupted_study_resumes_without_rerunning(tiny_data, tmp_path, mlflow_server):
    """SIGINT the driver after the first trial finished; --resume finishes the rest, reusing the parent run."""
    space_file = tmp_path / "space.yaml"
    good = SPACE["baseline"][0]
    space_file.write_text(
        yaml.safe_dump({"space": SPACE["space"], "baseline": [good, {**good, "lr0": 0.01}, {**good, "lr0": 0.005}]})
    )
    experiment = f"resume-{os.getpid()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri, "PYTHONPATH": str(ROOT)}
    args = [
        sys.executable,
        str(ROOT / "jobs" / "tune.py"),
        *study_args(tiny_data, space_file, experiment, trials=3, epochs=2, max_concurrent=1, grace_period=2),
        *["--storage", str(tmp_path / "studies"), "--name", "resumable", "--no-promote"],
    ]
    client = MlflowClient(mlflow_server.uri)
    proc = subprocess.Popen(
        args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        first = None
        while first is None and time.monotonic() < deadline:
            time.sleep(0.5)
            found = client.get_experiment_by_name(experiment)
            if found is None:
                continue
            done = client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'")
            first = next((r for r in done if "facemask.trial_id" in r.data.tags), None)
        assert first is not None, "no trial finished in time"
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C to the driver
        output = proc.communicate(timeout=180)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, output[-3000:]
    assert "--resume" in output
    first_history = [(m.step, m.timestamp) for m in client.get_metric_history(first.info.run_id, "val/cls_loss")]

    resumed = subprocess.run(args + ["--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    parents = [r for r in runs if "facemask.study_path" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trials = [r for r in runs if "facemask.trial_id" in r.data.tags]
    assert len(trials) == 3 and len({r.data.tags["facemask.trial_id"] for r in trials}) == 3
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials)
    # the trial that had finished was not trained again: its metrics are exactly what they were
    after = [(m.step, m.timestamp) for m in client.get_metric_history(first.info.run_id, "val/cls_loss")]
    assert after == first_history and sorted(s for s, _ in after) == [1, 2]


# Two sizes, each with its cost, as the two trials (the baseline points; no ASHA with two objectives).
COST_SPACE = {
    "space": {"imgsz": {"type": "choice", "values": [96, 160]}, **SPACE["space"]},
    "baseline": [{"imgsz": 96, **SPACE["baseline"][1]}, {"imgsz": 160, **SPACE["baseline"][0]}],
}


def test_a_study_with_a_cost_registers_its_front_and_a_budget_chooses_from_it(tiny_data, tracking, tmp_path, ray_local):
    from click.testing import CliRunner

    from facemask.cli import main
    from facemask.quality.budget import FRONT_TAG, latency_tag
    from facemask.training.summary import pareto_front

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(COST_SPACE))
    name = f"front-{tracking['experiment']}"
    cfg = StudyConfig(
        data=tiny_data, model="yolo26n.yaml", trials=2, epochs=2, imgsz=160, batch=8, search_space=space,
        cpus_per_trial=1, storage=str(tmp_path / "studies"), name="front", metric="cls_loss", mode="min",
        experiment=tracking["experiment"], registered_model=name, tracking_uri=tracking["uri"],
        latency_target="cpu-onnx", max_latency_ms=1000.0,
    )  # fmt: skip
    result = tune(cfg)

    # Both trials ran to the end (no ASHA with two objectives), each with its size's measured cost.
    assert result.counts == {"finished": 2, "stopped_early": 0, "failed": 0}, result.trials
    cost = {t["config"]["imgsz"]: t["latency_ms"] for t in result.trials}
    assert 0 < cost[96] < cost[160], cost
    # The cheaper trial is always on the front; the dearer one too unless its val loss is no lower
    # (losses at two sizes are not comparable, so which it is depends on the run).
    assert [p["trial_id"] for p in result.front] == [r["trial_id"] for r in pareto_front(result.trials, "min")]
    assert result.front[0]["latency_ms"] == cost[96]

    client, _ = child_runs(tracking["uri"], result.parent_run_id)
    parent = client.get_run(result.parent_run_id)
    objectives = {k: v for k, v in parent.data.params.items() if k.startswith("searcher.objectives.")}
    assert objectives == {"searcher.objectives.cls_loss": "min", "searcher.objectives.latency_ms": "min"}
    assert parent.data.params["scheduler.type"] == "none" and parent.data.metrics["front/size"] == len(result.front)
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"front.json", "latency.json", "importance.json"} <= artifacts
    assert "plots/pareto.png" in {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    for point in result.front:  # registered, tagged with its cost and study, scored on test
        tags = client.get_model_version(name, point["version"]).tags
        assert float(tags[latency_tag("cpu-onnx")]) == point["latency_ms"] and tags[FRONT_TAG] == "front"
        assert tags["facemask.imgsz"] == str(point["imgsz"]) and "test_mAP50-95" in tags, sorted(tags)
    # The study's own budget (1000 ms) holds the whole front: its best test score was put to the gate.
    assert result.promoted and "within budget" in result.promote_reason

    # The same choice from the command line, with a budget only the small version fits ...
    between = (cost[96] + cost[160]) / 2
    args = ["promote", "--max-latency-ms", f"{between:.3f}", "--registered-model", name, "--study", "front"]
    chosen = CliRunner().invoke(main, [*args, "--alias", "edge", "--json"])
    assert chosen.exit_code == 0, chosen.output
    small = next(p["version"] for p in result.front if p["imgsz"] == 96)
    assert yaml.safe_load(chosen.stdout)["candidate"] == small
    # ... and a budget none fits is refused, naming the cheapest version.
    refused = CliRunner().invoke(main, ["promote", "--max-latency-ms", "0.01", "--registered-model", name])
    assert refused.exit_code != 0
    assert f"the cheapest is version {small} at {cost[96]:.1f} ms" in refused.output
