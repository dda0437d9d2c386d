"""Live streams: newest-frame-wins intake, stable ids per face, people counted by mask state."""

from __future__ import annotations

import random

import pytest

from facemask.serving.api_schema import APIError
from facemask.serving.live.settings import LIVE_DEFAULTS, live_settings
from facemask.serving.live.tracker import LatestFrame, PeopleTracker


def test_latest_frame_keeps_only_the_newest_and_counts_the_rest():
    slot = LatestFrame()
    assert slot.take() is None
    for i in range(5):
        slot.put(i)
    assert slot.take() == 4
    assert slot.take() is None
    slot.put(5)
    assert slot.take() == 5
    assert (slot.received, slot.dropped) == (6, 4)


FACES = [  # start x, y, speed x, speed y (px per frame), size, class
    (20, 40, 9, 1, 60, "with_mask"),
    (560, 200, -8, -1, 70, "without_mask"),
    (300, 260, 3, -2, 50, "mask_weared_incorrect"),
]


def clip(frames: int = 45, seed: int = 0):
    """Three faces crossing a 640x360 frame, one of them unseen for three frames, with box jitter:
    what a good detector reports on a generated clip whose faces move at known speeds."""
    rng = random.Random(seed)
    for t in range(frames):
        found = []
        for k, (x, y, vx, vy, size, label) in enumerate(FACES):
            if k == 2 and 20 <= t < 23:
                continue  # occluded for three frames: must come back with the same id
            x1, y1 = x + vx * t + rng.uniform(-2, 2), y + vy * t + rng.uniform(-2, 2)
            # One frame in five, the detector calls the first person's mask wrong: the state is a majority.
            shown = "mask_weared_incorrect" if k == 0 and t % 5 == 4 else label
            found.append(
                {
                    "label": shown,
                    "class_id": 0,
                    "confidence": rng.uniform(0.6, 0.95),
                    "box": {"x1": x1, "y1": y1, "x2": x1 + size, "y2": y1 + size},
                }
            )
        rng.shuffle(found)  # the detector's order means nothing
        yield found


def test_each_face_keeps_one_id_through_the_clip_and_people_are_counted_by_state():
    tracker = PeopleTracker(frame_rate=30)
    ids_by_face: dict[int, set] = {0: set(), 1: set(), 2: set()}
    for t, detections in enumerate(clip()):
        for d in tracker.update(detections):
            if d["track_id"] is None:
                continue
            # Which face is it? The one whose known path is nearest to the box's corner.
            face = min(
                range(3),
                key=lambda k: (
                    abs(d["box"]["x1"] - (FACES[k][0] + FACES[k][2] * t))
                    + abs(d["box"]["y1"] - (FACES[k][1] + FACES[k][3] * t))
                ),
            )
            ids_by_face[face].add(d["track_id"])
    assert all(len(ids) == 1 for ids in ids_by_face.values()), ids_by_face
    assert len(set().union(*ids_by_face.values())) == 3
    summary = tracker.summary()
    assert summary["people"] == 3
    assert summary["by_class"] == {"with_mask": 1, "without_mask": 1, "mask_weared_incorrect": 1}
    assert summary["frames"] == 45


def test_a_one_frame_blip_is_not_a_person():
    tracker = PeopleTracker(frame_rate=30, min_frames=3)
    blip = [
        {"label": "without_mask", "class_id": 1, "confidence": 0.9, "box": {"x1": 10, "y1": 10, "x2": 50, "y2": 50}}
    ]
    tracker.update(blip)
    tracker.update(blip)
    for _ in range(5):
        tracker.update([])
    assert tracker.summary()["people"] == 0


def test_live_settings_are_checked_like_query_parameters():
    settings = live_settings({"key": "k", "conf": 0.4, "imgsz": 640, "model": " 3 "}, LIVE_DEFAULTS)
    assert (settings["conf"], settings["imgsz"], settings["model"]) == (0.4, 640, "3")
    assert "key" not in settings
    assert LIVE_DEFAULTS["conf"] is None and LIVE_DEFAULTS["imgsz"] is None  # the model's operating point
    back = live_settings({"conf": None, "imgsz": None}, settings)
    assert (back["conf"], back["imgsz"]) == (None, None)
    for bad, field in [
        ({"conf": 2}, "conf"),
        ({"imgsz": 12.5}, "imgsz"),
        ({"fps": "fast"}, "fps"),
        ({"colour": 1}, "colour"),
        ({"model": "../etc"}, "serve_multiplexed_model_id"),
    ]:
        with pytest.raises(APIError) as caught:
            live_settings(bad, LIVE_DEFAULTS)
        assert caught.value.status in (400, 422) and field in caught.value.message


def test_one_face_scored_as_two_classes_is_one_person_and_weak_boxes_only_help_tracking():
    tracker = PeopleTracker(frame_rate=30)
    for t in range(6):
        box = {"x1": 100 + 3 * t, "y1": 80, "x2": 160 + 3 * t, "y2": 150}
        shifted = {k: v + 1 for k, v in box.items()}
        found = [
            {"label": "without_mask", "class_id": 1, "confidence": 0.8, "box": box},
            {"label": "mask_weared_incorrect", "class_id": 2, "confidence": 0.3, "box": shifted},
            # a weak detection elsewhere: tracked, never shown, never a person
            {
                "label": "with_mask",
                "class_id": 0,
                "confidence": 0.15,
                "box": {"x1": 400, "y1": 50, "x2": 440, "y2": 90},
            },
        ]
        shown = tracker.update(found, show_conf=0.25)
        assert [d["label"] for d in shown] == ["without_mask"], shown
    assert tracker.summary()["people"] == 1
    assert tracker.summary()["by_class"]["without_mask"] == 1
