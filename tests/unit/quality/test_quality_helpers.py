"""The promotion gate's decision. Each checked against known answers (the fast tier: `make test-fast`)."""

from __future__ import annotations

import pytest

from facemask.core.errors import ConfigError
from facemask.quality.bootstrap import Interval
from facemask.quality.promotion import promotion_decision

# ---------------------------------------------------------------- promotion gate


@pytest.mark.parametrize(
    "args, promoted, reason",
    [
        (("2", 0.5, "2", 0.4, True), False, "already holds"),
        (("3", None, "2", 0.4, False), True, "forced"),
        (("3", 0.5, None, None, False), True, "no version held"),
        (("3", 0.5, "2", None, True), True, "never evaluated"),
        (("3", 0.5, "2", 0.4, False), False, "different data"),
        (("3", 0.5, "2", 0.4, True), False, "no stored per-image predictions"),
        (
            ("3", 0.5, "2", 0.4, True, Interval(0.1, 0.02, 0.18)),
            True,
            "better than version 2: Δ mAP50-95 +0.100 [+0.020, +0.180]",
        ),
        (
            ("3", 0.41, "2", 0.4, True, Interval(0.012, -0.018, 0.041)),
            False,
            "not distinguishable from version 2: Δ mAP50-95 +0.012 [-0.018, +0.041]",
        ),
    ],
)
def test_promotion_decision(args, promoted, reason):
    force = reason == "forced"
    difference = args[5] if len(args) > 5 else None
    decided, why = promotion_decision(*args[:5], force=force, difference=difference)
    assert decided is promoted and reason in why


def test_promotion_refuses_an_unevaluated_candidate():
    with pytest.raises(ConfigError, match="facemask evaluate"):
        promotion_decision("3", None, "2", 0.4, True)
