"""The Pareto front of score against cost, and the (model, size) pairs a study measures."""

from __future__ import annotations

import pytest

from facemask.core.errors import ConfigError
from facemask.training.space import costs_to_measure
from facemask.training.summary import pareto_front

NAN = float("nan")


def row(trial: str, objective: float, latency: float | None) -> dict:
    return {"trial_id": trial, "objective": objective, "latency_ms": latency, "config": {}}


def test_the_front_keeps_only_trials_nothing_beats_on_both_cheapest_first():
    rows = [
        row("slow-good", 0.60, 50.0),
        row("fast-poor", 0.30, 10.0),
        row("dominated", 0.29, 20.0),  # slower and worse than fast-poor
        row("middle", 0.45, 25.0),
        row("tie", 0.45, 25.0),  # the same point as middle: one version per point
        row("unscored", NAN, 5.0),
        row("uncosted", 0.9, None),
    ]
    assert [r["trial_id"] for r in pareto_front(rows, "max")] == ["fast-poor", "middle", "slow-good"]
    # Minimising (a loss): lower is better.
    rows = [row("a", 1.0, 10.0), row("b", 0.5, 20.0), row("c", 0.7, 30.0)]
    assert [r["trial_id"] for r in pareto_front(rows, "min")] == ["a", "b"]
    assert pareto_front([row("x", NAN, 1.0)], "max") == []


def test_a_study_measures_each_model_and_size_it_can_train_and_refuses_a_range():
    space = {"imgsz": {"type": "choice", "values": [320, 640]}, "model": {"type": "choice", "values": ["n", "s"]}}
    baseline = [{"imgsz": 480}]
    assert costs_to_measure(space, baseline, "n", 640) == [("n", 320), ("n", 640), ("s", 320), ("s", 640), ("n", 480)]
    assert costs_to_measure({"lr0": {"type": "uniform", "low": 0, "high": 1}}, [], "yolo26n.yaml", 160) == [
        ("yolo26n.yaml", 160)
    ]
    with pytest.raises(ConfigError, match="imgsz: with a cost objective it must be a choice"):
        costs_to_measure({"imgsz": {"type": "randint", "low": 320, "high": 640}}, [], "n", 640)


def test_a_budget_without_a_target_and_a_cost_with_ray_train_workers_are_refused(tmp_path):
    from facemask.core.settings import StudyConfig
    from facemask.training.tune import study_costs

    base = {"data": tmp_path / "data.yaml", "tracking_uri": "sqlite:///x.db"}
    with pytest.raises(ConfigError, match="--max-latency-ms needs --latency-target"):
        study_costs(StudyConfig(**base, max_latency_ms=40.0), {}, [])
    workers = StudyConfig(**base, latency_target="cpu-onnx", ray_workers_per_trial=2)
    with pytest.raises(ConfigError, match="use one worker per trial"):
        study_costs(workers, {}, [])
    with pytest.raises(ConfigError, match="--latency-target 'gpu': unknown target; choose one of cpu-onnx"):
        study_costs(StudyConfig(**base, latency_target="gpu"), {}, [])
    assert study_costs(StudyConfig(**base), {}, []) == {}


def test_the_study_prints_its_front_and_draws_score_against_cost(tmp_path):
    from facemask.cli.train import study_table
    from facemask.data.plots import pareto_plot
    from facemask.training.finish import StudyResult

    rows = [row("fast", 0.30, 10.0), row("slow", 0.60, 50.0), row("worse", 0.2, 30.0)]
    front = pareto_front(rows, "max")
    result = StudyResult(
        "run", {}, "slow", {"mAP50-95": 0.6}, {"finished": 3, "stopped_early": 0, "failed": 0}, 3, 1.0, "/s"
    )
    result.front = [dict(p, version=str(i + 1), test={"mAP50-95": 0.25 + i / 10}) for i, p in enumerate(front)]
    table = study_table(result)
    assert "Pareto front, score against latency (2 versions, cheapest first):" in table
    assert "version 1: 10.0 ms a frame, val 0.3000, test mAP50-95 0.2500  (trial fast)" in table
    (plot,) = pareto_plot(rows, result.front, "mAP50-95", "cpu-onnx", tmp_path)
    assert plot.name == "pareto.png" and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pareto_plot([row("x", NAN, 1.0)], [], "mAP50-95", "cpu-onnx", tmp_path) == []
