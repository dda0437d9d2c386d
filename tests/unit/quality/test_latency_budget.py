"""Choosing a version by a latency budget (facemask.quality.budget), on registry rows."""

from __future__ import annotations

import pytest

from facemask.core.errors import ConfigError
from facemask.quality.budget import choose_within_budget, latency_tag

TAG = latency_tag("cpu-onnx")


def version(number: str, ms: float | None, score: float | None) -> dict:
    metrics = {k: v for k, v in ((TAG, ms), ("test_mAP50-95", score)) if v is not None}
    return {"version": number, "metrics": metrics}


VERSIONS = [version("1", 60.0, 0.50), version("2", 20.0, 0.40), version("3", 35.0, 0.44), version("4", 25.0, 0.44)]


def test_the_best_score_within_the_budget_wins_and_a_tie_goes_to_the_faster():
    assert choose_within_budget(VERSIONS, "cpu-onnx", 100).version == "1"
    choice = choose_within_budget(VERSIONS, "cpu-onnx", 40)
    assert (choice.version, choice.latency_ms, choice.score) == ("4", 25.0, 0.44)  # 3 scores the same, slower
    assert "the best of 3 within budget (4 costed)" in choice.reason
    assert choose_within_budget(VERSIONS, "cpu-onnx", 20).version == "2"  # the budget is inclusive


def test_a_budget_none_fits_names_the_cheapest_and_uncosted_versions_are_not_weighed():
    with pytest.raises(ConfigError, match=r"the cheapest is version 2 at 20.0 ms \(test_mAP50-95 0.4000\)"):
        choose_within_budget(VERSIONS, "cpu-onnx", 10)
    uncosted = [version("5", None, 0.9), version("6", 5.0, None)]  # no latency; no test score
    with pytest.raises(ConfigError, match="no version in the registry has a measured latency on cpu-onnx"):
        choose_within_budget(uncosted, "cpu-onnx", 100)
    assert choose_within_budget(VERSIONS + uncosted, "cpu-onnx", 100).version == "1"
