"""Sampling in production without a camera: which frames are kept and why, the limits, the
pool written off the hot path (a full queue drops and counts), and the export read back by
the training data's own reader."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from facemask.core.errors import ConfigError
from facemask.learning.export import export_pool
from facemask.learning.pool import SamplePool
from facemask.learning.sampler import Sampler, SamplingRule

RULE = SamplingRule(faces="keep", band=0.1, random_share=0.0, per_hour=3)
THRESHOLDS = {"with_mask": 0.5, "without_mask": 0.4, "mask_weared_incorrect": 0.3}


def face(label: str, confidence: float, track: int | None = None, x: float = 10) -> dict:
    box = {"x1": x, "y1": 10.0, "x2": x + 30, "y2": 50.0}
    return {"label": label, "confidence": confidence, "track_id": track, "box": box}


def test_frames_are_kept_where_the_model_is_unsure_a_class_flips_or_a_rare_class_shows():
    sampler = Sampler(RULE, THRESHOLDS, default=0.5, seed=0)
    assert sampler.decide("door", [face("with_mask", 0.95, 1)], 0.0) == []  # sure, common: nothing to learn
    assert sampler.decide("door", [face("with_mask", 0.55, 2)], 1.0) == ["uncertain"]  # within 0.1 of 0.5
    assert sampler.decide("door", [face("without_mask", 0.9, 3)], 2.0) == []
    assert sampler.decide("door", [face("with_mask", 0.9, 3)], 3.0) == ["flip"]  # person 3 changed class
    assert sampler.decide("hall", [face("mask_weared_incorrect", 0.25, 9)], 4.0) == ["rare", "uncertain"]
    assert sampler.counts["kept"] == 3 and sampler.counts["reason_flip"] == 1


def test_one_image_per_person_and_a_rate_limit_per_camera_per_hour():
    sampler = Sampler(RULE, THRESHOLDS, default=0.5, seed=0)
    assert sampler.decide("door", [face("with_mask", 0.52, 1)], 0.0) == ["uncertain"]
    assert sampler.decide("door", [face("with_mask", 0.53, 1)], 1.0) == []  # person 1 is in the pool already
    assert sampler.counts["duplicate"] == 1
    assert sampler.decide("door", [face("with_mask", 0.53, 1), face("with_mask", 0.5, 2, x=60)], 2.0) == ["uncertain"]
    assert sampler.decide("door", [face("with_mask", 0.5, None)], 3.0) == ["uncertain"]  # untracked: no identity
    assert sampler.decide("door", [face("with_mask", 0.5, None)], 4.0) == []  # the 4th in an hour: limited
    assert sampler.counts["rate_limited"] == 1
    assert sampler.decide("hall", [face("with_mask", 0.5, None)], 5.0) == ["uncertain"]  # per camera
    assert sampler.decide("door", [face("with_mask", 0.5, None)], 3600.5) == ["uncertain"]  # the window moved on


def test_the_random_share_keeps_about_its_share_of_any_frame():
    rule = SamplingRule(faces="keep", random_share=0.05, per_hour=100_000)
    sampler = Sampler(rule, THRESHOLDS, default=0.5, seed=1)
    kept = sum(bool(sampler.decide("door", [face("with_mask", 0.99)], i)) for i in range(20_000))
    assert 0.04 < kept / 20_000 < 0.06  # about 1,000 frames: a binomial 95% interval is +-0.003


@pytest.mark.parametrize(
    "section, says",
    [
        ({}, "sampling.faces None: say what happens to faces"),
        ({"faces": "keep", "band": 0.9}, "sampling.band 0.9"),
        ({"faces": "keep", "rare": ["no_mask"]}, "sampling.rare"),
        ({"faces": "keep", "per_hour": 0}, "sampling.per_hour 0"),
        ({"faces": "keep", "bands": 0.1}, "unknown field 'bands'"),
    ],
)
def test_a_sampling_mistake_names_the_field_and_faces_must_be_chosen(section, says):
    with pytest.raises(ConfigError, match=None) as caught:
        SamplingRule.parse(section, "cameras.yaml: sampling")
    assert says in str(caught.value)


FRAME = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)


def test_the_pool_writes_images_with_their_pre_labels_and_a_full_queue_drops_and_counts(tmp_path):
    gate = threading.Event()

    def slow_fetch(frame):  # a disk or a Ray that is slow: the queue fills, the caller never waits
        gate.wait(10)
        return frame

    pool = SamplePool(tmp_path / "samples", SamplingRule(faces="blur"), slow_fetch)
    labels = [face("without_mask", 0.8)]
    started = time.perf_counter()
    offered = [
        pool.offer("door", FRAME, labels, ["uncertain"], {"at": 100.0 + i, "model_version": "m/3"}) for i in range(40)
    ]
    assert time.perf_counter() - started < 0.5  # `offer` never blocks
    assert offered.count(False) == pool.counts["dropped"] >= 40 - 33  # 32 queued, one being written
    gate.set()
    pool.close(wait_s=10)
    images = sorted((tmp_path / "samples" / "door").glob("*.jpg"))
    assert len(images) == pool.counts["written"] == offered.count(True)
    meta = json.loads(images[0].with_suffix(".json").read_text())
    assert meta["detections"][0]["label"] == "without_mask" and meta["model_version"] == "m/3"
    assert meta["faces"] == "blur" and meta["width"] == 160 and meta["reasons"] == ["uncertain"]
    assert (tmp_path / "samples").stat().st_mode & 0o077 == 0  # the owner's alone: it may hold faces


def test_the_export_is_read_back_by_the_training_reader_and_label_studio_gets_predictions(tmp_path):
    from facemask.data.sources import list_source, parse_row

    pool = SamplePool(tmp_path / "samples", SamplingRule(faces="keep"), lambda frame: frame)
    for i, label in enumerate(["without_mask", "mask_weared_incorrect"]):
        pool.offer("door", FRAME, [face(label, 0.7, x=20 + 50 * i)], ["rare"], {"at": 10.0 + i, "model_version": "v3"})
    pool.close()
    result = export_pool(tmp_path / "samples", tmp_path / "voc", "voc")
    assert result["exported"] == 2
    listing = list_source(tmp_path / "voc", "voc")
    parsed = [parse_row(row) for row in listing.rows]
    labels = sorted(box.label for p in parsed for record in [p.record] for box in record.boxes)
    assert labels == ["mask_weared_incorrect", "without_mask"] and all(not p.problems for p in parsed)
    export_pool(tmp_path / "samples", tmp_path / "ls", "label-studio")
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    (result0,) = tasks[0]["predictions"][0]["result"]
    assert tasks[0]["data"]["image"].startswith("/data/local-files/?d=images/door-")
    assert result0["value"]["rectanglelabels"] == ["without_mask"] and result0["value"]["x"] == pytest.approx(12.5)
    assert tasks[0]["predictions"][0]["model_version"] == "v3"
    assert "mask_weared_incorrect" in (tmp_path / "ls" / "label_config.xml").read_text()


def test_psi_is_near_zero_for_the_same_answers_and_large_for_a_new_scene():
    from facemask.learning.drift import DriftMonitor, psi, reference_of

    rng = np.random.default_rng(0)
    classes = rng.choice(3, 5000, p=[0.8, 0.17, 0.03])
    scores = rng.beta(5, 2, 5000)
    reference = reference_of(classes, scores)
    assert abs(sum(reference["class_mix"].values()) - 1) < 1e-6 and reference["answers"] == 5000
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0 and psi([0.9, 0.1], [0.5, 0.5]) > 0.25
    monitor = DriftMonitor(reference, {}, default=0.0, window_s=600, min_answers=200)
    names = ["with_mask", "without_mask", "mask_weared_incorrect"]
    for i in range(300):  # the same scene as val
        c = rng.choice(3, p=[0.8, 0.17, 0.03])
        monitor.update("door", [{"label": names[c], "confidence": float(rng.beta(5, 2))}], at=float(i))
    same = monitor.figures("door", 300.0)
    assert same["against"] == "val" and same["class_mix"] < 0.1 and same["score"] < 0.1
    for i in range(300, 900):  # night: fewer masks seen, and lower scores
        c = rng.choice(3, p=[0.4, 0.5, 0.1])
        monitor.update("door", [{"label": names[c], "confidence": float(rng.beta(2, 3))}], at=float(i))
    shifted = monitor.figures("door", 900.0)
    assert shifted["class_mix"] > 0.25 and shifted["score"] > 0.25 and shifted["answers"] == 600  # the last 10 min
    assert monitor.figures("hall", 900.0) is None  # a camera with no answers has no figure


def test_without_a_reference_a_camera_is_compared_with_its_own_first_hour():
    from facemask.learning.drift import DriftMonitor

    monitor = DriftMonitor(None, {"with_mask": 0.5}, default=0.3, window_s=600, baseline_s=1200, min_answers=50)
    for i in range(0, 1200, 2):
        monitor.update(
            "door", [{"label": "with_mask", "confidence": 0.9}, {"label": "with_mask", "confidence": 0.4}], i
        )
    assert monitor.figures("door", 1000.0) is None  # the baseline is still being gathered
    figures = monitor.figures("door", 1200.0)
    assert figures["against"] == "baseline" and figures["class_mix"] < 0.01  # 0.4 is under with_mask's threshold
    for i in range(1200, 1800, 2):
        monitor.update("door", [{"label": "without_mask", "confidence": 0.9}], i)
    assert monitor.figures("door", 1800.0)["class_mix"] > 1
