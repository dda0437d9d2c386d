"""Real trainings on tiny generated data, tracked by a real `mlflow server` on loopback."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from facemask.cli import main
from facemask.detection.detector import ModelNotFoundError, load_detector
from facemask.quality.evaluate import evaluate
from facemask.quality.promotion import promote
from facemask.training.train import train
from tests.services import tiny_training

# Not heavy: one training at a time, in this process, without a Ray node of its own; it runs
# beside the heavy tests' worker as the session's trained model does (tests/machine_lock.py).
pytestmark = pytest.mark.integration


def tiny(data, tracking, tmp_path, **kw):
    return tiny_training(data, tmp_path / "runs", **{"epochs": 2, "experiment": tracking["experiment"], **kw})


def test_training_run_has_params_metrics_artifacts_and_registers(tiny_data, tracking, tmp_path):
    name = f"det-{tracking['experiment']}"
    result = train(tiny(tiny_data, tracking, tmp_path, register=True, registered_model=name, plots=True))
    client = MlflowClient(tracking["uri"])
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["epochs"] == "2" and params["imgsz"] == "160"
    assert params["data_fingerprint"] == result.fingerprint
    assert "facemask_version" in params and "git_commit" in params
    history = client.get_metric_history(result.run_id, "val/mAP50-95")
    assert sorted(m.step for m in history) == [1, 2]
    for key in ("train/box_loss", "val/box_loss", "val/precision", "val/recall", "val/mAP50", "lr/pg0"):
        assert len(client.get_metric_history(result.run_id, key)) == 2, key
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "weights")}
    assert {"weights/best.pt", "weights/last.pt"} <= artifacts
    top = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"results.csv", "args.yaml", "data", "plots"} <= top
    plots = {a.path.split("/")[-1] for a in client.list_artifacts(result.run_id, "plots")}
    assert "confusion_matrix.png" in plots and "BoxPR_curve.png" in plots and "BoxF1_curve.png" in plots
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.digest == result.fingerprint[:36]
    profile = json.loads(run.inputs.dataset_inputs[0].dataset.profile)  # its lineage (`facemask lineage`)
    assert profile["splits_sha256"] == hashlib.sha256((tiny_data.parent / "splits.json").read_bytes()).hexdigest()
    assert any(k.startswith("system/") for k in run.data.metrics), "no MLflow system metrics"

    version = client.get_model_version(name, result.version)
    assert version.tags["data.fingerprint"] == result.fingerprint
    assert "val_mAP50-95" in version.tags
    by_version = load_detector(f"models:/{name}/{result.version}", tracking_uri=tracking["uri"])
    assert by_version.info.run_id == result.run_id and by_version.info.version == result.version

    # evaluation on the clean test split is logged to the run and to the version
    evaluation = evaluate(
        f"models:/{name}/{result.version}", tiny_data, imgsz=160, device="cpu", tracking_uri=tracking["uri"]
    )
    assert set(evaluation.overall) == {"precision", "recall", "mAP50", "mAP50-95"}
    assert len(evaluation.confusion_matrix) == 4
    assert "test_mAP50-95" in client.get_model_version(name, result.version).tags
    assert "test/mAP50-95" in client.get_run(result.run_id).data.metrics
    assert decision_for(name, result.version, tracking["uri"]).promoted  # first one takes the empty alias
    champion = load_detector(f"models:/{name}@champion", tracking_uri=tracking["uri"])
    assert champion.info.version == result.version
    detections = champion.predict([str(next((tiny_data.parent / "images" / "test").iterdir()))], imgsz=160, conf=0.0001)
    assert len(detections) == 1


def decision_for(name: str, version: str, tracking_uri: str, force: bool = False):
    return promote(f"models:/{name}/{version}", tracking_uri, force=force)


def test_promotion_gate_both_ways(tiny_data, tracking, tmp_path):
    """The gate compares the stored per-image predictions of two real evaluations by a paired bootstrap:
    two one-epoch models are within noise of each other, so the second is refused, with the interval."""
    name = f"gate-{tracking['experiment']}"
    first = train(tiny(tiny_data, tracking, tmp_path, epochs=1, register=True, registered_model=name, run_name="a"))
    second = train(tiny(tiny_data, tracking, tmp_path, epochs=1, register=True, registered_model=name, run_name="b"))
    tracking_uri = tracking["uri"]
    with pytest.raises(ValueError, match="facemask evaluate"):
        decision_for(name, first.version, tracking_uri)
    for version in (first.version, second.version):
        evaluated = evaluate(
            f"models:/{name}/{version}", tiny_data, imgsz=160, device="cpu", resamples=200, tracking_uri=tracking_uri
        )
        assert evaluated.intervals.images == len(list((tiny_data.parent / "images" / "test").iterdir()))
    assert decision_for(name, first.version, tracking_uri).promoted
    within = decision_for(name, second.version, tracking_uri)
    assert not within.promoted and re.fullmatch(
        r"not distinguishable from version 1: Δ mAP50-95 [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", within.reason
    ), within.reason
    assert within.details["resamples"] == 1000 and within.details["images"] > 0
    assert load_detector(f"models:/{name}@champion", tracking_uri=tracking_uri).info.version == first.version
    forced = decision_for(name, second.version, tracking_uri, force=True)
    assert (
        forced.promoted
        and load_detector(f"models:/{name}@champion", tracking_uri=tracking_uri).info.version == second.version
    )
    run = CliRunner().invoke(main, ["promote", "--model-uri", f"models:/{name}/{first.version}"])
    kept = f"kept version {second.version} @champion, not version {first.version}: not distinguishable from version"
    assert run.exit_code == 0 and kept in run.output
    # A script asks for the answer as JSON, and for "kept" as an exit code of its own.
    run = CliRunner().invoke(
        main, ["promote", "--model-uri", f"models:/{name}/{first.version}", "--json", "--exit-code"]
    )
    assert run.exit_code == 3, run.output
    answer = json.loads(run.stdout)
    assert answer["promoted"] is False and (answer["holder"], answer["candidate"]) == (second.version, first.version)
    pair = [f"models:/{name}/{v}" for v in (first.version, second.version)]
    run = CliRunner().invoke(
        main, ["compare", *pair, "--data", str(tiny_data), "--imgsz", "160", "--json", "--exit-code"]
    )
    assert run.exit_code in (0, 3), run.output
    answer = json.loads(run.stdout)
    low, high = answer["difference"]["overall"]["mAP50-95"][1:]
    distinguishable = low > 0 or high < 0
    assert (run.exit_code == 3) == (not distinguishable) == (answer["verdict"] == "not distinguishable")
    # `evaluate --json` prints only the JSON on stdout (Ultralytics' chatter goes to stderr)
    run = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--model-uri",
            f"models:/{name}/{second.version}",
            "--data",
            str(tiny_data),
            "--imgsz",
            "160",
            "--json",
        ],
    )
    assert run.exit_code == 0, run.output
    answer = json.loads(run.stdout)
    assert answer["overall"].keys() == {"precision", "recall", "mAP50", "mAP50-95"}
    low, high = answer["intervals"]["overall"]["mAP50"][1:]
    assert 0 <= low <= high <= 1 and answer["intervals"]["resamples"] == 1000


def test_loader_says_what_is_missing(tracking):
    with pytest.raises(ModelNotFoundError, match="no registered model 'nobody'"):
        load_detector("models:/nobody@champion", tracking_uri=tracking["uri"])
    with pytest.raises(ValueError, match="looked up in an MLflow store"):
        load_detector("models:/nobody@champion")
    with pytest.raises(ModelNotFoundError, match="no such weights file"):
        load_detector("/nowhere/best.pt")


def test_failed_training_ends_failed(tiny_data, tracking, tmp_path):
    with pytest.raises(NotImplementedError, match="NoSuchOptimizer"):
        train(tiny(tiny_data, tracking, tmp_path, overrides={"optimizer": "NoSuchOptimizer"}))
    client = MlflowClient(tracking["uri"])
    experiment = client.get_experiment_by_name(tracking["experiment"])
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_server_that_disappears_mid_run(tiny_data, tmp_path, monkeypatch):
    """The server dies after epoch 1 and restarts after epoch 2 (so epoch 2's logging surely meets
    it down, however fast training or the restart is): training finishes, the run ends FINISHED,
    no epoch is lost."""
    from tests.services import MlflowServer

    server = MlflowServer(tmp_path / "flaky").start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    restarted = threading.Event()

    def kill_after_first_epoch(trainer):
        if trainer.epoch == 0:
            server.stop(signal.SIGKILL)
        elif trainer.epoch == 1 and not restarted.is_set():
            restarted.set()
            threading.Thread(target=server.start, daemon=True).start()

    try:
        cfg = tiny_training(tiny_data, tmp_path / "runs", epochs=3, experiment="flaky")
        result = train(cfg, callbacks={"on_fit_epoch_end": [kill_after_first_epoch]})
        assert restarted.is_set()
        assert result.epochs_run == 3
        assert result.logging_failures > 0
        server.wait()
        client = MlflowClient(server.uri)
        assert client.get_run(result.run_id).info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(result.run_id, "val/mAP50-95"))
        assert steps == [1, 2, 3]
    finally:
        server.stop()


def test_offline_pretrained_name_is_one_clear_line(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    run = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--weights", "yolo26s.pt", "--epochs", "1"])
    assert run.exit_code == 2
    assert run.output.strip() == (
        "error: yolo26s.pt is not on this machine and there is no network: pass --weights yolo26s.yaml "
        "to train from scratch, or a path to a .pt"
    )


def test_a_model_reference_is_checked_from_metadata_without_a_download(registered_detector, tmp_path, monkeypatch):
    """`facemask serve` checks the reference its replicas will each download, without downloading it itself."""
    import mlflow

    from facemask.detection.detector import resolve_model

    store, name = registered_detector["tracking_uri"], registered_detector["name"]
    monkeypatch.setenv("FACEMASK_MODEL_CACHE", str(tmp_path / "cache"))
    downloads = []
    real = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(
        mlflow.artifacts, "download_artifacts", lambda *a, **k: downloads.append(a or k) or real(*a, **k)
    )
    info = resolve_model(f"models:/{name}/{registered_detector['other']}", tracking_uri=store, download=False)
    assert info.weights == "" and downloads == []
    with pytest.raises(ModelNotFoundError, match="has no version 999"):
        resolve_model(f"models:/{name}/999", tracking_uri=store, download=False)
    with pytest.raises(ModelNotFoundError, match="no ONNX export"):
        resolve_model(f"models:/{name}@champion", backend="onnx", tracking_uri=store, download=False)
    with pytest.raises(ModelNotFoundError, match="no such run"):
        resolve_model("runs:/0123456789abcdef/model", tracking_uri=store, download=False)
    assert downloads == []
    assert resolve_model(f"models:/{name}/{registered_detector['other']}", tracking_uri=store).weights.endswith(".pt")
    assert len(downloads) == 1


def test_a_version_is_downloaded_once_per_machine_into_a_bounded_cache(registered_detector, tmp_path, monkeypatch):
    """Replicas, watchers and rollbacks resolve the same versions again and again: one download
    each, into the model cache, never a temporary folder left behind per call."""
    import tempfile

    from facemask.detection.detector import resolve_model

    store, name = registered_detector["tracking_uri"], registered_detector["name"]
    cache = tmp_path / "cache"
    monkeypatch.setenv("FACEMASK_MODEL_CACHE", str(cache))
    monkeypatch.setenv("FACEMASK_MODEL_CACHE_KEEP", "1")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where a stray temporary folder would go
    champion = resolve_model(f"models:/{name}@champion", tracking_uri=store)
    assert (
        resolve_model(f"models:/{name}/{registered_detector['champion']}", tracking_uri=store).weights
        == champion.weights
    )
    assert Path(champion.weights).is_relative_to(cache) and Path(champion.weights).is_file()
    assert len(list(cache.iterdir())) == 1
    other = resolve_model(f"models:/{name}/{registered_detector['other']}", tracking_uri=store)
    assert other.weights != champion.weights and Path(other.weights).is_file()
    # Keep 1: the champion's copy, least recently used, made room for the other version's.
    assert [p.name for p in cache.iterdir()] == [Path(other.weights).relative_to(cache).parts[0]]
    by_run = resolve_model(f"runs:/{registered_detector['run_id']}/weights/best.pt", tracking_uri=store)
    assert Path(by_run.weights).name == "best.pt" and Path(by_run.weights).is_relative_to(cache)
    assert list(scratch.iterdir()) == []
