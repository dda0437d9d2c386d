"""A study stopped by a signal is told apart from one that ran its course (facemask.training.tune.interrupted),
on result grids shaped as Ray Tune returns them after a stop."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from facemask.core.settings import StudyConfig
from facemask.training.tune import interrupted


@dataclass
class Result:
    """What `interrupted` reads of a ray.tune.Result: its error and its last metrics."""

    epochs: int | None
    error: Exception | None = None
    metrics: dict = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = {} if self.epochs is None else {"epoch": self.epochs}


class Grid(list):
    """What `interrupted` reads of a ray.tune.ResultGrid: its results and its trials' end states."""

    def __init__(self, results: list[Result], running: int = 0) -> None:
        super().__init__(results)
        self.num_errors = sum(r.error is not None for r in results)
        self.num_terminated = len(results) - self.num_errors - running


def study(**options) -> StudyConfig:
    return StudyConfig(
        data="data.yaml", trials=2, epochs=3, grace_period=3, tracking_uri="sqlite:///unused.db", **options
    )


@pytest.mark.parametrize(
    "grid, how",
    [
        (Grid([Result(3), Result(3)]), "both trials ran their epochs"),
        (Grid([Result(3), Result(2, error=RuntimeError("crash"))]), "one crashed for good"),
    ],
)
def test_a_study_that_ran_its_course_is_not_interrupted(grid, how):
    assert not interrupted(grid, study(), elapsed=30.0), how


@pytest.mark.parametrize(
    "grid, how",
    [
        # The failure seen under `ray job stop`: the stop came as the second trial started, and Tune
        # ended it terminated, with no epoch reported; the study used to be registered as done.
        (Grid([Result(3), Result(None)]), "the last trial terminated before its first epoch"),
        (Grid([Result(3), Result(1)]), "terminated before ASHA could have stopped it"),
        (Grid([Result(3), Result(1)], running=1), "a trial left running"),
        (Grid([Result(3)]), "fewer trials than asked"),
    ],
)
def test_a_study_cut_short_is_interrupted(grid, how):
    assert interrupted(grid, study(), elapsed=30.0), how


def test_a_stop_signal_taken_meanwhile_interrupts_whatever_the_grid_says():
    assert interrupted(Grid([Result(3), Result(3)]), study(), elapsed=30.0, signalled=True)


def test_a_spent_time_budget_ends_the_study_however_short_its_trials():
    cut = Grid([Result(3), Result(1)], running=0)
    assert not interrupted(cut, study(time_budget_s=20.0), elapsed=25.0)
    assert interrupted(cut, study(time_budget_s=60.0), elapsed=25.0)
