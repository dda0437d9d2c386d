"""A short clip per event, from a ring buffer per camera: a few seconds before the alert and a
few after, faces blurred as in the snapshot.

Each camera keeps its last `before_s` seconds of processed frames, at most `fps` a second,
shrunk to `width` pixels across: before_s x fps frames of width x height x 3 bytes a camera
(about 12 MB for 16:9 at the defaults: 4 s, 4 fps, 640 x 360). An alert starts a recording:
what the buffer holds, then the camera's frames for `after_s` seconds. The recording is then
blurred (the camera's `blur`: all, others, none), the subject outlined, and written as WebM
(VP8, which browsers play as it is) beside the snapshot, `<out>/events/<camera>/<key>.webm`,
within the same size and age limits.

The watch never waits on a clip, nor shares its CPU with one. Frames and alerts reach the clip
thread through a bounded queue; a full queue drops the frame, counted, and a frame is fetched,
shrunk and encoded on that thread only, at the lowest CPU priority. At most MAX_RECORDINGS
clips record at once, which bounds their memory as the buffer's length bounds each camera's; an
alert beyond them gets no clip, counted. A recording whose camera falls silent is written with
what it has; so is every recording at a stop, within CLOSE_S: the watch's rows and summary wait
on it, and `ray job stop` kills 3 s after its signal. A clip cut short there, or by a kill, leaves
a `.part.webm`, never a clip; the next start removes it.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from facemask.core.runtime import lowest_priority_thread
from facemask.events.evidence import EvidenceStore, redacted
from facemask.events.rules import Clip

log = logging.getLogger("facemask.events")

MAX_RECORDINGS = 8
QUEUE = 256  # frames and alerts waiting for the clip thread
CLOSE_S = 0.5  # a stop waits this long at most for the recordings under way
STALE_S = 5.0  # a recording still open this long past its end (its camera fell silent) is written as it is
FOURCC = "VP80"  # WebM's VP8; OpenCV warns that the tag is unusual, then writes it


@dataclass
class Shot:
    """One buffered frame: shrunk RGB, every face's box and the tracked people's, in its pixels."""

    at: float
    image: np.ndarray
    faces: list[dict]
    tracked: dict[int, dict]


@dataclass
class Recording:
    camera: str
    key: str
    track_id: int
    blur: str
    until: float  # the alert's time + after_s
    shots: list[Shot] = field(default_factory=list)


class ClipRecorder:
    def __init__(
        self, settings: Clip, evidence: EvidenceStore, on_written: Callable[[str], None] | None = None
    ) -> None:
        """`on_written(key)`: told on the clip thread as each event's clip is in place."""
        self.settings, self.evidence, self.on_written = settings, evidence, on_written
        # Imported here, never first on the clip thread: OpenCV's loader sets sys.path back to the
        # copy it took when it began, dropping what a concurrent import elsewhere added meanwhile.
        import cv2  # noqa: F401

        self.ring_length = math.ceil(settings.before_s * settings.fps) + 1
        self.rings: dict[str, deque[Shot]] = {}
        self.recordings: list[Recording] = []
        self.last: dict[str, float] = {}  # each camera's last frame queued (the watch's thread)
        self.counts: Counter = Counter()
        self.count_lock = threading.Lock()
        self.queue: queue.Queue = queue.Queue(QUEUE)
        self.stopping = threading.Event()
        for left in evidence.root.glob("*/*.part.webm"):  # a clip a killed or cut-short watch left
            left.unlink(missing_ok=True)
        self.thread = threading.Thread(target=self._run, name="facemask-clips", daemon=True)
        self.thread.start()

    # --- called by the watch's loop: never waits ---------------------------------------------

    def offer(
        self, camera: str, at: float, frame: Any, fetch: Callable, faces: list[dict], tracked: dict[int, dict]
    ) -> None:
        """A processed frame of `camera`; `fetch(frame)` gives its RGB array, on the clip thread.
        Frames closer than 1/fps to the last one queued are not queued."""
        if at - self.last.get(camera, -math.inf) < 0.95 / self.settings.fps:
            return
        self.last[camera] = at
        self._send(("frame", camera, at, frame, fetch, faces, tracked), "frames_dropped")

    def start(self, camera: str, key: str, track_id: int, at: float, blur: str) -> None:
        """An alert at `at`: record the person `track_id` from `before_s` before to `after_s` after."""
        self._send(("start", camera, key, track_id, at, blur), "skipped")

    def forget(self, camera: str) -> None:
        """The camera is gone: its recordings are written, its buffer let go."""
        self.last.pop(camera, None)
        self._send(("forget", camera), "errors", wait_s=1.0)

    def close(self, timeout_s: float = CLOSE_S) -> None:
        """A stop: every recording under way is written with what it has, within `timeout_s`; the
        frames still queued are passed over (what they add is not worth the wait)."""
        deadline = time.monotonic() + timeout_s
        self.stopping.set()
        self._send(("stop",), "errors", wait_s=timeout_s)
        self.thread.join(max(0.0, deadline - time.monotonic()))

    def summary(self) -> dict[str, int]:
        with self.count_lock:
            counts = {name: self.counts[name] for name in ("written", "skipped", "frames_dropped", "errors")}
        return {**counts, "recording": len(self.recordings)}

    def _send(self, item: tuple, counted_as: str, wait_s: float = 0.0) -> None:
        try:
            self.queue.put(item, timeout=wait_s) if wait_s else self.queue.put_nowait(item)
        except queue.Full:
            self._count(counted_as)

    def _count(self, name: str) -> None:
        with self.count_lock:
            self.counts[name] += 1

    # --- the clip thread ---------------------------------------------------------------------

    def _run(self) -> None:
        lowest_priority_thread()  # a clip gets the CPU the watch leaves, never the watch's
        while True:
            try:
                item = self.queue.get(timeout=1.0)
            except queue.Empty:
                item = ("idle",)
            if item[0] == "stop":
                self._finish(lambda r: True)
                return
            if item[0] == "frame" and self.stopping.is_set():
                continue
            try:
                if item[0] != "idle":
                    getattr(self, f"_{item[0]}")(*item[1:])
            except Exception:  # noqa: BLE001 - a bad frame costs its clip's frame, never the thread
                self._count("errors")
                log.exception("clips: %s of camera %s failed", item[0], item[1])
            # A camera that fell silent (while others still send) ends its recordings as they are.
            self._finish(lambda r: time.time() > r.until + STALE_S)

    def _frame(self, camera: str, at: float, frame: Any, fetch: Callable, faces: list, tracked: dict) -> None:
        shot = shrink(fetch(frame), at, faces, tracked, self.settings.width)
        ring = self.rings.setdefault(camera, deque(maxlen=self.ring_length))
        ring.append(shot)
        for recording in self.recordings:
            if recording.camera == camera and at <= recording.until:
                recording.shots.append(shot)  # shared with the buffer, not copied
        self._finish(lambda r: r.camera == camera and at >= r.until)

    def _start(self, camera: str, key: str, track_id: int, at: float, blur: str) -> None:
        if len(self.recordings) >= MAX_RECORDINGS:
            self._count("skipped")
            log.warning("clips: %d recording already; event %s gets its snapshot only", MAX_RECORDINGS, key)
            return
        shots = [s for s in self.rings.get(camera, ()) if s.at >= at - self.settings.before_s]
        self.recordings.append(Recording(camera, key, track_id, blur, at + self.settings.after_s, shots))
        self._finish(lambda r: r.key == key and bool(r.shots) and r.shots[-1].at >= r.until)

    def _forget(self, camera: str) -> None:
        self._finish(lambda r: r.camera == camera)
        self.rings.pop(camera, None)

    def _finish(self, done: Callable[[Recording], bool]) -> None:
        finished = [r for r in self.recordings if done(r)]
        self.recordings = [r for r in self.recordings if r not in finished]
        for recording in finished:
            try:
                self._write(recording)
            except Exception:  # noqa: BLE001 - the event keeps its snapshot
                self._count("errors")
                log.exception("clips: the clip of event %s could not be written", recording.key)

    def _write(self, recording: Recording) -> None:
        import cv2

        if not recording.shots:
            self._count("skipped")
            return
        height, width = recording.shots[0].image.shape[:2]
        path = self.evidence.path(recording.camera, recording.key, ".webm")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{recording.key}.part.webm")  # the container follows the name
        fourcc = cv2.VideoWriter_fourcc(*FOURCC)
        writer = cv2.VideoWriter(str(partial), cv2.CAP_FFMPEG, fourcc, self.settings.fps, (width, height))
        if not writer.isOpened():
            raise RuntimeError("this OpenCV cannot write WebM (VP8): install opencv-python with its FFmpeg")
        try:
            for shot in recording.shots:
                image = clip_frame(shot, recording.track_id, recording.blur)
                if image.shape[:2] != (height, width):  # the camera changed its resolution mid-clip
                    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
                writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        self.evidence.keep(partial, path)
        self._count("written")
        if self.on_written is not None:
            self.on_written(recording.key)


def shrink(image: np.ndarray, at: float, faces: list[dict], tracked: dict[int, dict], width: int) -> Shot:
    """The frame at most `width` across, both sides even (VP8's 4:2:0), its boxes scaled alike.
    Always a copy: the buffer must not hold the camera's (read-only, shared) frame."""
    import cv2

    height0, width0 = image.shape[:2]
    scale = min(1.0, width / width0)
    size = (max(2, int(width0 * scale) // 2 * 2), max(2, int(height0 * scale) // 2 * 2))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    sx, sy = size[0] / width0, size[1] / height0

    def scaled(box: dict) -> dict:
        return {"x1": box["x1"] * sx, "y1": box["y1"] * sy, "x2": box["x2"] * sx, "y2": box["y2"] * sy}

    return Shot(at, small, [scaled(b) for b in faces], {t: scaled(b) for t, b in tracked.items()})


def clip_frame(shot: Shot, track_id: int, blur: str) -> np.ndarray:
    """One frame of a clip, as the snapshot is kept: faces blurred per `blur`, the subject outlined
    where it is seen."""
    return redacted(shot.image, shot.faces, shot.tracked.get(track_id), blur)
