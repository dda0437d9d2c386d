"""The tuner benchmark at its smallest: `facemask tune` and Ultralytics' `model.tune()` each with a
few seconds of budget on generated data, their best configurations retrained and compared paired,
the test-time levers and the operating point scored, everything under one MLflow parent run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.heavy(reason="the tuner benchmark's studies, end to end")]

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.over_budget(
    reason="two searches each spend their whole 45 s budget (a shorter one ends the study before its first "
    "trial reports an epoch), then three retrainings, the paired differences and the levers: about 190 s"
)
def test_the_tuner_benchmark_runs_end_to_end_at_its_smallest(tmp_path):
    args = "--synth 40 --searches a,b,d --budget-min 0.75 --search-epochs 2 --grace 1 --retrain-epochs 1 --seeds 0"
    args += " --imgsz 160 --large-imgsz 192 --serve-imgsz 224 --resamples 100 --batch 8 --workers 0"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    run = subprocess.run(
        [sys.executable, str(ROOT / "jobs/benchmarks/benchmark_tuners.py"), *args.split(), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    searches = results["searches"]
    assert set(searches) == {"a", "b", "d"}
    assert searches["a"]["started"] >= 1 and searches["a"]["trial_epochs"] >= 1 and searches["a"]["top_weights"]
    # model.tune() was stopped when its budget was spent: what it finished counts, nothing else.
    assert (
        searches["b"]["started"] >= 1 and searches["b"]["error"] is None and searches["b"]["seconds"] < 0.75 * 60 + 150
    )
    assert [(r["variant"], r["seed"], r["epochs"]) for r in results["rows"]] == [("a", 0, 1), ("b", 0, 1), ("d", 0, 1)]
    assert set(results["differences"]) == {"a-d", "b-d", "a-b"}
    for difference in results["differences"].values():
        value, low, high = difference["overall"]["mAP50"]
        assert low <= value <= high
    assert {"test-time augmentation", "scored at 192"} <= set(results["levers"])
    assert all(lever["ms"] > 0 for lever in results["levers"].values())
    assert results["operating_point"]["imgsz"] in (160, 192, 224)
    table = (tmp_path / "table.txt").read_text()
    assert "paired differences" in table and "count MAE" in table and "model.tune()" in table

    from facemask.tracking import client

    store = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = (tmp_path / "parent_run_id").read_text().strip()
    children = store.search_runs(
        [e.experiment_id for e in store.search_experiments()], f"tags.mlflow.parentRunId = '{parent}'"
    )
    names = {r.info.run_name for r in children}
    # The study's own parent run, each Ultralytics iteration, and each retrain, all under the benchmark's run.
    assert "tuners-study" in names and "b-1" in names and {"a-seed0", "b-seed0", "d-seed0"} <= names, names
