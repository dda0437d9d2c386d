"""One camera's people and mask compliance, per time window.

A window's row counts each person once, in the mask state seen most often on their track
(`PeopleTracker`), if they were in view (in the camera's zone) during the window and their
track is confirmed. The share wearing a mask correctly is `with_mask / people`; a window
with nobody in it has no share (null), not 0% or 100%.
"""

from __future__ import annotations

import time
from typing import Any

from facemask.core.classes import CLASS_NAMES
from facemask.serving.live.tracker import TRACK_CONF, PeopleTracker


def in_zone(detection: dict, zone: tuple[float, float, float, float] | None, width: int, height: int) -> bool:
    """Whether a face's box centre lies in `zone` (fractions of the frame); everything is, with no zone."""
    if zone is None:
        return True
    box = detection["box"]
    cx, cy = (box["x1"] + box["x2"]) / 2 / width, (box["y1"] + box["y2"]) / 2 / height
    return zone[0] <= cx <= zone[2] and zone[1] <= cy <= zone[3]


def window_row(camera: str, start: float, end: float, counts: dict[str, int], **extra: Any) -> dict[str, Any]:
    people = sum(counts.values())
    return {
        "camera": camera,
        "start": round(start, 3),
        "end": round(end, 3),
        "people": people,
        "by_class": dict(counts),
        "compliance": round(counts["with_mask"] / people, 4) if people else None,
        **extra,
    }


class CameraCompliance:
    """Tracks one camera's faces and closes a compliance row every `window_s` seconds."""

    def __init__(self, camera: str, window_s: float, keep_windows: int, frame_rate: float, show_conf: float) -> None:
        self.camera, self.window_s, self.keep_windows, self.show_conf = camera, window_s, keep_windows, show_conf
        # The watch forgets people per window itself (`close`), so the tracker keeps them until then.
        self.tracker = PeopleTracker(frame_rate=frame_rate, forget_s=None)
        self.start = time.time()
        self.seen: set[int] = set()  # tracks in view during this window
        self.previous: set[int] = set()  # ... and during the one before (kept in memory)
        self.history: list[dict[str, Any]] = []
        self.frames = 0

    def update(self, detections: list[dict], zone, width: int, height: int, at: float | None = None) -> list[dict]:
        """Track this frame's detections (all of them, down to TRACK_CONF); returns those shown.
        `at`: when the frame was captured (the tracker follows the rate frames are processed at)."""
        inside = [d for d in detections if d["confidence"] >= TRACK_CONF and in_zone(d, zone, width, height)]
        shown = self.tracker.update(inside, show_conf=self.show_conf, at=at)
        self.frames += 1
        self.seen.update(d["track_id"] for d in shown if d["track_id"] is not None)
        return shown

    def due(self, now: float) -> bool:
        return now - self.start >= self.window_s

    def counts(self) -> dict[str, int]:
        """People in view during this window so far, by mask state (confirmed tracks only)."""
        counts = dict.fromkeys(CLASS_NAMES, 0)
        for track_id in self.seen:
            if self.tracker.confirmed(track_id):
                counts[self.tracker.state(track_id)] += 1
        return counts

    def current(self, now: float) -> dict[str, Any]:
        """The open window's row so far (the page shows it beside the closed ones)."""
        return window_row(self.camera, self.start, now, self.counts(), processed=self.frames)

    def close(self, now: float, **extra: Any) -> dict[str, Any]:
        """This window's row; a new window starts. People not seen for two windows are forgotten,
        so a camera watched for months holds a bounded number of tracks."""
        row = window_row(self.camera, self.start, now, self.counts(), **extra)
        for track_id in set(self.tracker.people) - self.seen - self.previous:
            self.tracker.forget(track_id)
        self.previous, self.seen = self.seen, set()
        self.start, self.frames = now, 0
        self.history = (self.history + [row])[-self.keep_windows :]
        return row
