"""Repeat-factor sampling on tiny sets whose class frequencies are known."""

from __future__ import annotations

import math

import pytest

from facemask.data.sampling import repeat_factors


def test_factors_follow_the_rarest_class_of_each_image():
    # 10 images: class 0 in all, class 1 in 5 (f=0.5), class 2 in 1 (f=0.1).
    images = [{0, 1}] * 4 + [{0, 1, 2}] + [{0}] * 5
    plan = repeat_factors(images, threshold=0.4, seed=0)
    assert plan.class_frequency == {0: 1.0, 1: 0.5, 2: 0.1}
    assert plan.class_factor[0] == 1.0 and plan.class_factor[1] == 1.0  # above the threshold: left alone
    assert plan.class_factor[2] == pytest.approx(math.sqrt(0.4 / 0.1))  # 2.0
    assert plan.image_factor == [1.0] * 4 + [pytest.approx(2.0)] + [1.0] * 5
    assert plan.repeats == [1] * 4 + [2] + [1] * 5 and plan.listed == 11


def test_fractional_factors_round_to_their_expectation():
    # class 1 in 1 of 100 images at threshold 0.0225: factor sqrt(2.25) = 1.5.
    images = [{0, 1}] * 1000 + [{0}] * 99000
    plan = repeat_factors(images, threshold=0.0225, seed=3)
    assert plan.class_factor[1] == pytest.approx(1.5)
    repeated = plan.repeats[:1000]
    assert set(repeated) == {1, 2} and abs(sum(repeated) / 1000 - 1.5) < 0.06
    assert plan.repeats[1000:] == [1] * 99000
    assert repeat_factors(images, 0.0225, seed=3).repeats == plan.repeats  # seeded


def test_an_image_without_objects_is_listed_once_and_a_bad_threshold_is_refused():
    assert repeat_factors([set(), {1}], threshold=0.9).repeats[0] == 1
    with pytest.raises(ValueError, match="must be > 0"):
        repeat_factors([{0}], threshold=0)
