"""One model trained by two Ray Train workers (gloo on CPU): the same weights on both ranks,
half the data each, one MLflow run, a checkpoint per epoch, and a restart after a worker dies."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from mlflow import MlflowClient

from facemask.core.settings import DistributedConfig, TrainConfig
from facemask.training.distributed import RANKS_FILE, train_distributed
from tests.services import tiny_training, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.heavy(reason="one model trained by two Ray Train workers at once")]


def config(data, tracking, tmp_path, name: str, epochs: int = 2, plots: bool = False) -> TrainConfig:
    # nbs=8: an optimizer step every global batch of 8 (Ultralytics would otherwise accumulate
    # to 64 images, more than this tiny set's epoch holds, and the weights would not move).
    options = {"epochs": epochs, "plots": plots, "run_name": name, "overrides": {"nbs": 8}}
    return tiny_training(data, tmp_path / "runs", experiment=tracking["experiment"], **options)


def rank_log(storage, name: str) -> list[dict]:
    path = storage / name / RANKS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def the_one_run(tracking) -> str:
    client = MlflowClient(tracking["uri"])
    experiment = client.get_experiment_by_name(tracking["experiment"])
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0].info.run_id


def test_two_workers_train_one_model_each_on_half_the_data(ray_local, tiny_data, tracking, tmp_path):
    storage = tmp_path / "storage"
    # plots=True, as `facemask train` runs: it adds a collective to each validation, which
    # every rank must join.
    result = train_distributed(
        config(tiny_data, tracking, tmp_path, "ddp", plots=True),
        DistributedConfig(workers=2, cpus_per_worker=1, storage=str(storage)),
    )
    train_images = len(list((tiny_data.parent / "images" / "train").iterdir()))
    epochs = [entry for entry in rank_log(storage, "ddp") if not entry["final"]]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for entry in epochs:
        first, second = entry["ranks"]
        assert (first["rank"], second["rank"]) == (0, 1)
        assert first["weights_sha256"] == second["weights_sha256"], "the ranks' weights diverged"
        # A distributed sampler: each rank gets its half, padded by at most one image.
        assert {first["images"], second["images"]} <= {train_images // 2, (train_images + 1) // 2}, entry
        assert entry["checkpoint"], "every epoch reports a checkpoint"
    assert epochs[0]["ranks"][0]["weights_sha256"] != epochs[1]["ranks"][0]["weights_sha256"]

    run_id = the_one_run(tracking)
    assert result.run_id == run_id and result.epochs_run == 2
    client = MlflowClient(tracking["uri"])
    for key in ("train/box_loss", "val/mAP50-95", "lr/pg0"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2], key
    assert client.get_run(run_id).data.params["epochs"] == "2"
    assert {a.path for a in client.list_artifacts(run_id, "weights")} == {"weights/best.pt", "weights/last.pt"}
    assert result.best.is_file() and set(result.metrics) >= {"val/mAP50-95", "val/precision"}


def test_a_killed_worker_resumes_from_the_last_checkpoint_in_the_same_run(ray_local, tiny_data, tracking, tmp_path):
    storage, outcome, held = tmp_path / "storage", {}, tmp_path / "held-in-epoch-2"

    def hold_rank_1_in_epoch_2(trainer) -> None:
        # Runs in the workers. The first rank 1 to enter epoch 2 announces its PID and waits
        # there to be killed; the one Ray Train starts in its place finds the file and goes on.
        import ray.train

        if trainer.epoch != 1 or ray.train.get_context().get_world_rank() != 1:
            return
        try:
            with open(held, "x") as f:
                f.write(str(os.getpid()))
        except FileExistsError:
            return
        while True:
            time.sleep(0.1)

    def run() -> None:
        try:
            outcome["result"] = train_distributed(
                config(tiny_data, tracking, tmp_path, "fault", epochs=3),
                DistributedConfig(workers=2, storage=str(storage), max_failures=2),
                callbacks={"on_train_epoch_start": [hold_rank_1_in_epoch_2]},
            )
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(
        lambda: (held.is_file() and held.read_text() and rank_log(storage, "fault")) or not thread.is_alive(),
        600,
        "rank 1 held in epoch 2 after epoch 1's report",
    )
    assert "error" not in outcome, outcome.get("error")
    first = rank_log(storage, "fault")
    assert [e["epoch"] for e in first] == [1], first
    victim = int(held.read_text())
    assert victim == first[0]["ranks"][1]["pid"], (victim, first)
    os.kill(victim, signal.SIGKILL)  # a process of this test's own Ray instance
    thread.join(timeout=900)
    assert not thread.is_alive(), "training did not finish after the restart"
    assert "error" not in outcome, outcome.get("error")
    epochs = [e["epoch"] for e in rank_log(storage, "fault") if not e["final"]]
    assert epochs == [1, 2, 3], epochs  # epoch 2 restarted from epoch 1's checkpoint, reported once
    pids = {r["pid"] for e in rank_log(storage, "fault") for r in e["ranks"] if e["epoch"] and e["epoch"] >= 2}
    assert victim not in pids, "the killed worker cannot have reported after its death"
    run_id = the_one_run(tracking)
    client = MlflowClient(tracking["uri"])
    assert [m.step for m in client.get_metric_history(run_id, "val/mAP50-95")] == [1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert outcome["result"].run_id == run_id and outcome["result"].epochs_run == 3
