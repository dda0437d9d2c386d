"""AP intervals from stored per-image predictions, on constructed predictions whose AP is known."""

from __future__ import annotations

import numpy as np
import pytest

from facemask.core.classes import CLASS_NAMES
from facemask.quality.bootstrap import ImagePredictions, bootstrap, paired_bootstrap
from facemask.quality.promotion import promotion_decision


def images(n: int, found: float, seed: int = 0, false_positives: int = 0) -> ImagePredictions:
    """n images with one object of each class; a fraction `found` of objects detected exactly
    (confidence 0.9), the rest missed; `false_positives` extra boxes per image at confidence 0.95."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        tp, conf, cls = [], [], []
        for c in range(3):
            if rng.random() < found:
                tp.append([True] * 10)
                conf.append(0.9)
                cls.append(c)
        for _ in range(false_positives):
            tp.append([False] * 10)
            conf.append(0.95)
            cls.append(int(rng.integers(3)))
        out.append(
            {
                "name": f"{i}.jpg",
                "tp": np.array(tp, bool).reshape(-1, 10),
                "conf": conf,
                "pred_cls": cls,
                "target_cls": [0, 1, 2],
            }
        )
    return ImagePredictions.from_images(out)


def test_a_perfect_detector_scores_one_with_a_zero_width_interval():
    result = bootstrap(images(40, found=1.0), CLASS_NAMES, resamples=200)
    for scope in [result.overall, *result.per_class.values()]:
        for interval in scope.values():
            assert (interval.value, interval.low, interval.high) == (1.0, 1.0, 1.0)
    assert result.objects == {name: 40 for name in CLASS_NAMES} and result.images == 40


def test_a_detector_that_finds_nothing_scores_zero():
    result = bootstrap(images(40, found=0.0, false_positives=1), CLASS_NAMES, resamples=200)
    assert (result.overall["mAP50"].value, result.overall["mAP50"].low, result.overall["mAP50"].high) == (0, 0, 0)


def test_a_known_mix_lands_inside_its_interval():
    # Half the objects found, no false positive: precision 1 up to recall 0.5, so AP is the recall.
    p = images(200, found=0.5, seed=3)
    result = bootstrap(p, CLASS_NAMES, resamples=1000, seed=1)
    recall = float(np.sum(p.tp[:, 0])) / p.target_cls.size
    interval = result.overall["mAP50"]
    assert interval.value == pytest.approx(recall)
    assert interval.low < 0.5 < interval.high and interval.high - interval.low < 0.15
    # Seeded: the same call gives the same interval.
    again = bootstrap(p, CLASS_NAMES, resamples=1000, seed=1).overall["mAP50"]
    assert (again.low, again.high) == (interval.low, interval.high)


def test_saved_predictions_load_back_the_same(tmp_path):
    p = images(10, found=0.6, false_positives=1)
    p.save(tmp_path / "p.npz")
    q = ImagePredictions.load(tmp_path / "p.npz")
    assert q.names == p.names and np.array_equal(q.tp, p.tp) and np.array_equal(q.pred_img, p.pred_img)


def test_the_paired_difference_has_the_right_sign():
    better, worse = images(100, found=0.9, seed=5), images(100, found=0.4, seed=6)
    up = paired_bootstrap(better, worse, CLASS_NAMES, resamples=500).overall["mAP50-95"]
    down = paired_bootstrap(worse, better, CLASS_NAMES, resamples=500).overall["mAP50-95"]
    assert up.low > 0 and down.high < 0
    assert up.value == pytest.approx(-down.value)
    same = paired_bootstrap(better, better, CLASS_NAMES, resamples=100).overall["mAP50"]
    assert (same.value, same.low, same.high) == (0, 0, 0)


def test_paired_bootstrap_refuses_different_images():
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(images(10, 0.5), images(11, 0.5), CLASS_NAMES, resamples=10)


def test_the_gate_refuses_noise_and_takes_a_clear_gain():
    base = images(60, found=0.6, seed=1)
    noise = images(60, found=0.6, seed=1, false_positives=0)
    noise.conf = noise.conf + 0.001  # the same detections, a hair more confident: no real change
    within = paired_bootstrap(noise, base, CLASS_NAMES, resamples=300)
    promoted, reason = promotion_decision("4", 0.5, "3", 0.5, True, difference=within.overall["mAP50-95"])
    assert not promoted and reason.startswith("not distinguishable from version 3: Δ mAP50-95 +0.000 [")
    clear = paired_bootstrap(images(60, found=0.95, seed=2), base, CLASS_NAMES, resamples=300)
    promoted, reason = promotion_decision("4", 0.9, "3", 0.5, True, difference=clear.overall["mAP50-95"])
    assert promoted and "Δ mAP50-95 +" in reason
