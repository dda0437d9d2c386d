"""Which settings mattered (facemask.training.importance): fANOVA over a study's trials, shown
only once there are enough of them, and drawn and printed as the study reports it."""

from __future__ import annotations

import math
import random

import pytest

from facemask.cli.train import study_table
from facemask.data.plots import importance_plot
from facemask.training.finish import StudyResult
from facemask.training.importance import MIN_TRIALS, param_importance

SPACE = {
    "lr0": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
    "mosaic": {"type": "uniform", "low": 0.0, "high": 1.0},
    "nbs": {"type": "randint", "low": 8, "high": 65},
    "optimizer": {"type": "choice", "values": ["SGD", "AdamW"]},
}


def rows(n: int, seed: int = 1, objective=None) -> list[dict]:
    """Trials whose objective is driven by lr0 alone (a peak at 1e-2), with a little noise."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        config = {
            "lr0": 10 ** rng.uniform(-4, -1),
            "mosaic": rng.uniform(0, 1),
            "nbs": rng.randint(8, 64),
            "optimizer": rng.choice(["SGD", "AdamW"]),
        }
        value = objective(config) if objective else 0.6 - (math.log10(config["lr0"]) + 2) ** 2 / 4
        out.append(
            {"trial_id": f"t{i}", "status": "finished", "config": config, "objective": value + rng.gauss(0, 0.005)}
        )
    return out


def test_the_setting_that_drives_the_objective_is_ranked_first_and_the_shares_sum_to_one():
    importance = param_importance(rows(30), SPACE, "max")
    assert importance.shown and importance.evaluator == "fANOVA" and importance.trials == 30
    names = list(importance.shares)
    assert names[0] == "lr0" and importance.shares["lr0"] > 0.8, importance.shares
    assert set(names) == set(SPACE) and sum(importance.shares.values()) == pytest.approx(1.0)
    assert list(importance.shares.values()) == sorted(importance.shares.values(), reverse=True)
    # seeded: the same trials give the same table
    assert param_importance(rows(30), SPACE, "max").shares == importance.shares
    # a categorical setting that matters is found too
    by_optimizer = rows(30, seed=2, objective=lambda c: 0.5 if c["optimizer"] == "AdamW" else 0.1)
    assert next(iter(param_importance(by_optimizer, SPACE, "min").shares)) == "optimizer"


def test_too_few_scored_trials_show_nothing_and_say_how_many_more_are_needed():
    few = rows(MIN_TRIALS - 1) + [{"trial_id": "x", "status": "failed", "config": {}, "objective": float("nan")}]
    importance = param_importance(few, SPACE, "max")
    assert not importance.shown and importance.trials == MIN_TRIALS - 1
    assert importance.line() == f"which settings mattered: not shown, {MIN_TRIALS - 1} scored trials, 1 more needed"


def test_a_baseline_point_outside_the_space_and_a_setting_never_varied_are_handled():
    trials = rows(20)
    trials[0]["config"] |= {"lr0": 0.5, "optimizer": "Adam", "nbs": 128}  # outside every range
    for row in trials:
        row["config"]["mosaic"] = 1.0  # the same in every trial: nothing to rank
    importance = param_importance(trials, SPACE, "max")
    assert importance.shown and "mosaic" not in importance.shares and list(importance.shares)[0] == "lr0"
    same = [dict(r, config={k: 1 for k in ("lr0", "mosaic", "nbs")} | {"optimizer": "SGD"}) for r in rows(12)]
    assert param_importance(same, SPACE, "max").reason == "every trial had the same settings"


def test_the_study_prints_and_draws_the_table(tmp_path):
    importance = param_importance(rows(30), SPACE, "max")
    result = StudyResult(
        "run", {"lr0": 0.01}, "t1", {"mAP50-95": 0.5}, {"finished": 30, "stopped_early": 0, "failed": 0}, 60, 10.0, "/s"
    )
    result.importance = importance
    table = study_table(result)
    assert f"which settings mattered (fANOVA, 30 trials): lr0 {importance.shares['lr0']:.0%}" in table
    (plot,) = importance_plot(importance, "mAP50-95", tmp_path)
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert importance_plot(param_importance(rows(3), SPACE, "max"), "mAP50-95", tmp_path) == []
