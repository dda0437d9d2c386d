"""Newest-frame-wins intake, one tracked identity per person, and the compliance count.

Shared by the endpoint's `/live` WebSocket (`live.session`) and by `facemask predict` on a
camera or stream URL (`live.streams`).
A person who stands in view for ten seconds is one person, not three hundred detections:
ByteTrack (Ultralytics' implementation) gives each face a stable id across frames, and each
person's mask state is the class seen most often on their track.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any, Sequence

import numpy as np

from facemask.core.classes import CLASS_NAMES, class_id

# A track seen on fewer frames than this is not yet a person (one-frame false positives).
MIN_FRAMES = 3
# ByteTrack's second association uses detections down to this score (bytetrack.yaml's
# track_low_thresh): a stream's model runs at most this strict, whatever is shown.
TRACK_CONF = 0.1
# Boxes overlapping more than this are one face (YOLO26 can score one face as two classes).
SAME_FACE_IOU = 0.7
# A person unseen this long has left: ByteTrack gave up on their track after about a second,
# so they are folded into the stream's totals and forgotten (a stream open for days holds only
# the people in view, not everyone it ever saw).
FORGET_S = 10.0
# However busy the scene, at most this many people are held one by one; the oldest are folded first.
MAX_PEOPLE = 5000
# The tracker's idea of the frame rate follows the rate frames are processed at (not the
# camera's): measured over the updates of the last RATE_WINDOW_S, and moved when it changes by a fifth.
RATE_WINDOW_S = 2.0


class LatestFrame:
    """A one-slot mailbox: a frame not yet taken when a newer one arrives is dropped, and counted.

    The server and the stream reader never queue frames: when the model is busy, the newest
    frame wins, so latency stays one frame deep however fast the source sends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._item: Any = None
        self.received = 0
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._lock:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self.received += 1

    def take(self) -> Any:
        """The newest frame not yet taken, or None."""
        with self._lock:
            item, self._item = self._item, None
            return item


def iou(a: dict, b: dict) -> float:
    x1, y1 = max(a["x1"], b["x1"]), max(a["y1"], b["y1"])
    x2, y2 = min(a["x2"], b["x2"]), min(a["y2"], b["y2"])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a["x2"] - a["x1"]) * (a["y2"] - a["y1"]) + (b["x2"] - b["x1"]) * (b["y2"] - b["y1"]) - inter
    return inter / union if union > 0 else 0.0


def one_per_face(detections: list[dict]) -> list[dict]:
    """The most confident of each group of boxes on the same face, whatever their classes."""
    kept: list[dict] = []
    for d in sorted(detections, key=lambda d: -d["confidence"]):
        if all(iou(d["box"], k["box"]) <= SAME_FACE_IOU for k in kept):
            kept.append(d)
    return kept


class PeopleTracker:
    """One stream's tracker: detections in, the same detections with a `track_id` out.

    Its state (the Kalman tracks, each person's class counts) lives with the stream and
    goes when the stream's tracker is dropped. A lost face is kept for about a second of the
    frames actually processed (the rate is measured, so a stream processed at 30 fps keeps it
    for 30 updates and one at 5 fps for 5). With `forget_s`, people unseen that long are folded
    into the totals and dropped, so memory and `summary()`'s cost stay bounded; None keeps them
    until the owner forgets them (the watch does, per window).
    """

    def __init__(
        self, frame_rate: float = 30.0, min_frames: int = MIN_FRAMES, forget_s: float | None = FORGET_S
    ) -> None:
        from facemask.compat.ultralytics import ByteTracker

        self.tracker = ByteTracker(frame_rate)
        self.rate = frame_rate
        self.min_frames, self.forget_s = min_frames, forget_s
        self.frames = 0
        self.people: dict[int, Counter] = {}
        self.last_seen: dict[int, float] = {}  # track id -> when last shown (insertion order: oldest first)
        self.ended = dict.fromkeys(CLASS_NAMES, 0)  # confirmed people already forgotten, by state
        self.times: deque[float] = deque(maxlen=2048)
        self.pruned_at = 0.0

    def update(
        self, detections: list[dict], show_conf: float | Sequence[float] = 0.0, at: float | None = None
    ) -> list[dict]:
        """Give each detection (`box` x1..y2, `confidence`, `label`) a `track_id`; None while unconfirmed.

        Every detection helps tracking (ByteTrack matches weak ones to existing tracks);
        those under `show_conf` (one threshold, or one per class id: a model's operating point)
        are then left out of the answer, and of all boxes on one face
        (more than SAME_FACE_IOU overlap) only the most confident is kept. `at`: when the frame
        was taken (seconds, any clock), by default now.
        """
        at = time.monotonic() if at is None else at
        self._follow_rate(at)
        detections = one_per_face(detections)
        self.frames += 1
        if detections:
            boxes = np.array(
                [[d["box"]["x1"], d["box"]["y1"], d["box"]["x2"], d["box"]["y2"]] for d in detections], dtype=np.float32
            )
            xywh = np.column_stack(
                [
                    (boxes[:, 0] + boxes[:, 2]) / 2,
                    (boxes[:, 1] + boxes[:, 3]) / 2,
                    boxes[:, 2] - boxes[:, 0],
                    boxes[:, 3] - boxes[:, 1],
                ]
            )
            conf = np.array([d["confidence"] for d in detections], dtype=np.float32)
            cls = np.array([class_id(d["label"]) for d in detections], dtype=np.float32)
        else:
            xywh, conf, cls = np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
        tracked = self.tracker.update(xywh, conf, cls)
        out = [dict(d, track_id=None) for d in detections]
        for row in tracked:
            track_id, index = int(row[4]), int(row[-1])
            out[index]["track_id"] = track_id
            if shown(out[index], show_conf):
                self.people.setdefault(track_id, Counter())[out[index]["label"]] += 1
                self.last_seen.pop(track_id, None)
                self.last_seen[track_id] = at
        self._prune(at)
        return [d for d in out if shown(d, show_conf)]

    def _follow_rate(self, at: float) -> None:
        """Keep a lost face for about a second of the frames actually processed."""
        self.times.append(at)
        while at - self.times[0] > RATE_WINDOW_S:
            self.times.popleft()
        if self.times[-1] - self.times[0] < RATE_WINDOW_S / 2:
            return
        rate = (len(self.times) - 1) / (self.times[-1] - self.times[0])
        if abs(rate - self.rate) > 0.2 * self.rate:
            self.rate = rate
            self.tracker.set_frame_rate(rate)

    def _prune(self, at: float) -> None:
        """Fold people unseen for forget_s (or the oldest, past MAX_PEOPLE) into `ended`; once a second."""
        if self.forget_s is None or (at - self.pruned_at < 1.0 and len(self.last_seen) <= MAX_PEOPLE):
            return
        self.pruned_at = at
        while self.last_seen:
            track_id, seen_at = next(iter(self.last_seen.items()))
            if at - seen_at < self.forget_s and len(self.last_seen) <= MAX_PEOPLE:
                break
            if self.confirmed(track_id):
                self.ended[self.state(track_id)] += 1
            del self.last_seen[track_id]
            self.people.pop(track_id, None)

    def forget(self, track_id: int) -> None:
        """Drop a person without counting them in `ended` (the owner counted them already)."""
        self.people.pop(track_id, None)
        self.last_seen.pop(track_id, None)

    def confirmed(self, track_id: int) -> bool:
        seen = self.people.get(track_id)
        return bool(seen) and sum(seen.values()) >= self.min_frames

    def state(self, track_id: int) -> str | None:
        """A person's mask state: the class seen most often on their track (ties: the more severe)."""
        seen = self.people.get(track_id)
        if not seen:
            return None
        # Severity order breaks ties: without_mask, then worn incorrectly, then with_mask.
        order = {"without_mask": 0, "mask_weared_incorrect": 1, "with_mask": 2}
        return min(seen, key=lambda label: (-seen[label], order.get(label, 3)))

    def summary(self) -> dict:
        """People seen (tracks on at least min_frames frames) by mask state, and each state's share:
        those still held and those already folded into the totals."""
        counts = dict(self.ended)
        for track_id in self.people:
            if self.confirmed(track_id):
                counts[self.state(track_id)] += 1
        total = sum(counts.values())
        return {
            "people": total,
            "by_class": counts,
            "share": {name: round(n / total, 3) if total else 0.0 for name, n in counts.items()},
            "frames": self.frames,
        }


def shown(detection: dict, show_conf: float | Sequence[float]) -> bool:
    """Whether a detection is confident enough to show: one threshold, or its class's."""
    limit = show_conf if isinstance(show_conf, (int, float)) else show_conf[class_id(detection["label"])]
    return detection["confidence"] >= limit
