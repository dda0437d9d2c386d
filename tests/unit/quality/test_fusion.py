"""Weighted-box fusion, matching predictions to faces, and the operating point, on constructed boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facemask.core.operating_point import OperatingPoint, lowest, shown_thresholds
from facemask.detection.fusion import Boxes, weighted_boxes_fusion
from facemask.quality.bootstrap import ratio_interval
from facemask.quality.calibrate import candidate_sizes, class_threshold
from facemask.quality.scoring import LabelledImage, at_thresholds, count_errors, match, point_scores
from facemask.serving.live.tracker import shown


def boxes(*rows) -> Boxes:
    """(x1, y1, x2, y2, conf, cls) rows."""
    a = np.asarray(rows, float).reshape(-1, 6)
    return Boxes(a[:, :4], a[:, 4], a[:, 5].astype(int))


def test_two_models_agreeing_fuse_into_the_confidence_weighted_box():
    fused = weighted_boxes_fusion([boxes((0, 0, 10, 10, 0.9, 0)), boxes((2, 0, 12, 10, 0.6, 0))])
    assert len(fused) == 1
    # Corners weighted by confidence: x1 = (0.9*0 + 0.6*2) / 1.5 = 0.8, x2 = (0.9*10 + 0.6*12) / 1.5 = 10.8.
    np.testing.assert_allclose(fused.xyxy[0], [0.8, 0, 10.8, 10])
    # Both models found it: the mean confidence, unscaled.
    assert fused.conf[0] == pytest.approx(0.75)


def test_a_box_one_model_of_three_saw_keeps_a_third_of_its_confidence():
    fused = weighted_boxes_fusion([boxes((0, 0, 10, 10, 0.9, 0)), Boxes.empty(), Boxes.empty()])
    assert fused.conf.tolist() == pytest.approx([0.3])


def test_boxes_of_different_classes_or_places_stay_apart():
    fused = weighted_boxes_fusion(
        [boxes((0, 0, 10, 10, 0.8, 0), (50, 50, 60, 60, 0.7, 0)), boxes((0, 0, 10, 10, 0.6, 2))]
    )
    assert sorted(fused.cls.tolist()) == [0, 0, 2]
    # Sorted by confidence: each box was found by one of two models, so half its score.
    assert fused.conf.tolist() == pytest.approx([0.4, 0.35, 0.3])


def test_model_weights_scale_their_votes():
    fused = weighted_boxes_fusion([boxes((0, 0, 10, 10, 0.5, 1)), boxes((0, 0, 10, 10, 0.5, 1))], weights=[3, 1])
    # Scores 1.5 and 0.5 (conf x weight); mean 1.0, scaled by min(2 boxes, 2 models) / total weight 4.
    assert fused.conf.tolist() == pytest.approx([0.5])
    with pytest.raises(ValueError, match="2 weights for 1 models"):
        weighted_boxes_fusion([Boxes.empty()], weights=[1, 1])


def test_matching_uses_each_face_and_each_box_once_in_confidence_order():
    truth = boxes((0, 0, 10, 10, 1, 0), (20, 0, 30, 10, 1, 1))
    pred = boxes(
        (0, 0, 10, 10, 0.9, 0),  # exact: a hit at every threshold
        (0, 0, 10, 9, 0.8, 0),  # the same face again: a duplicate, never a hit
        (20, 0, 30, 10, 0.7, 0),  # the right place, the wrong class
        (21, 0, 30, 10, 0.6, 1),  # IoU 0.9 with the second face
    )
    tp = match(pred, truth)
    assert tp[0].all() and not tp[1].any() and not tp[2].any()
    assert tp[3].tolist() == [True] * 9 + [False]  # a hit up to IoU 0.9, not at 0.95


def labelled(*rows) -> LabelledImage:
    return LabelledImage("x.jpg", Path("x.jpg"), boxes(*rows))


def test_counts_precision_and_recall_at_per_class_thresholds():
    images = [labelled((0, 0, 10, 10, 1, 0), (20, 0, 30, 10, 1, 2)), labelled((0, 0, 10, 10, 1, 1))]
    found = [boxes((0, 0, 10, 10, 0.9, 0), (20, 0, 30, 10, 0.3, 2), (40, 0, 50, 10, 0.2, 0)), boxes()]
    kept = at_thresholds(found, [0.5, 0.5, 0.25])  # keeps the mask at 0.9 and the incorrect one at 0.3
    assert [len(k) for k in kept] == [2, 0]
    errors = count_errors(images, kept)
    assert errors["without_mask"].tolist() == [0, 1] and errors["all"].tolist() == [0, 1]
    scores = point_scores(images, kept, resamples=200)
    assert scores["all"]["precision"].value == 1.0
    assert scores["all"]["recall"].value == pytest.approx(2 / 3)
    assert scores["all"]["count_mae"].value == pytest.approx(0.5)


def test_ratio_interval_is_a_ratio_of_sums_and_brackets_it():
    i = ratio_interval(np.array([1, 3, 2, 0]), np.array([2, 4, 2, 2]), resamples=500)
    assert i.value == pytest.approx(0.6)
    assert i.low <= i.value <= i.high and i.low < i.high


def test_threshold_of_best_f1_and_of_a_target_precision():
    # Five faces of class 0; detections in falling confidence: hit, hit, miss, hit, miss, miss.
    truth = boxes(*[(i * 20, 0, i * 20 + 10, 10, 1, 0) for i in range(5)])
    pred = boxes(
        (0, 0, 10, 10, 0.9, 0),
        (20, 0, 30, 10, 0.8, 0),
        (200, 0, 210, 10, 0.7, 0),
        (40, 0, 50, 10, 0.6, 0),
        (300, 0, 310, 10, 0.5, 0),
        (400, 0, 410, 10, 0.4, 0),
    )
    images = [LabelledImage("a.jpg", Path("a.jpg"), truth)]
    # F1 after each: 2/6, 4/7, 4/8, 6/9, 6/10, 6/11 -> best at the fourth detection (0.6).
    assert class_threshold([pred], images, 0, None) == 0.6
    # Precision 1.0 holds through the second detection only.
    assert class_threshold([pred], images, 0, 1.0) == 0.8


def test_operating_point_round_trips_through_its_tag_and_filters_by_class():
    point = OperatingPoint(416, {"with_mask": 0.4, "without_mask": 0.3, "mask_weared_incorrect": 0.1})
    again = OperatingPoint.from_tag(point.to_tag())
    assert again == point and again.thresholds() == [0.4, 0.3, 0.1] and again.lowest == 0.1
    assert OperatingPoint.from_tag(None) is None
    assert point.keeps(2, 0.15) and not point.keeps(0, 0.15)
    # A request's conf applies to every class; without one, the point's; without a point, the default.
    assert shown_thresholds(0.5, point, 0.25) == 0.5
    assert shown_thresholds(None, point, 0.25) == [0.4, 0.3, 0.1]
    assert shown_thresholds(None, None, 0.25) == 0.25
    assert lowest([0.4, 0.3, 0.1]) == 0.1
    assert shown({"label": "mask_weared_incorrect", "confidence": 0.15}, [0.4, 0.3, 0.1])
    assert not shown({"label": "with_mask", "confidence": 0.15}, [0.4, 0.3, 0.1])


def test_candidate_sizes_try_the_training_size_a_third_larger_and_640():
    assert candidate_sizes(320) == [320, 416, 640]
    assert candidate_sizes(640) == [640]
    assert candidate_sizes(160) == [160, 224, 640]


def test_threshold_is_exact_on_ties_rounding_and_an_unreachable_precision(caplog):
    # Two faces. 0.9 hits the first; three boxes tied at 0.7: one hits the second, two miss.
    truth = boxes((0, 0, 10, 10, 1, 0), (20, 0, 30, 10, 1, 0))
    pred = boxes(
        (0, 0, 10, 10, 0.9, 0),
        (20, 0, 30, 10, 0.7, 0),
        (200, 0, 210, 10, 0.7, 0),
        (300, 0, 310, 10, 0.7, 0),
    )
    images = [LabelledImage("a.jpg", Path("a.jpg"), truth)]
    # A threshold of 0.7 keeps all three tied boxes: precision 2/4, not the 2/2 its first tied box
    # alone would read. So precision 1.0 is held at 0.9 only, and F1 there (2/3) ties 0.7's.
    assert class_threshold([pred], images, 0, 1.0) == 0.9
    assert class_threshold([pred], images, 0, None) == 0.9
    # Rounded down, so the box that decided it stays in (0.61236 rounded to 0.6124 dropped it).
    one = [LabelledImage("b.jpg", Path("b.jpg"), boxes((0, 0, 10, 10, 1, 0)))]
    assert class_threshold([boxes((0, 0, 10, 10, 0.61236, 0))], one, 0, None) == 0.6123
    with caplog.at_level("WARNING", logger="facemask.quality.calibrate"):
        assert class_threshold([pred], images, 0, 1.01) == 0.9  # never reached: the best F1's, and said
    assert "never reaches precision 1.01" in caplog.text
