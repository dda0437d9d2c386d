"""One camera's reader: decodes its stream on a thread, keeps only the newest frame, reconnects.

`facemask watch` runs them a few cameras to a Ray actor (watch.groups), anywhere in the cluster.
The runner takes the newest frame as soon as there is one (`latest`); a frame that a newer one
replaced first is dropped and counted. Frames travel to the detector as arrays in Ray's object store, shrunk
here to the model's input size: no JPEG, and 1/9 of a 1080p frame's bytes at 640.

A stream that ends or fails is opened again after 0.25, 0.5, then every 1 s (a refused
connection costs nothing), so a camera that comes back is read again within about 1 s plus
its stream's opening (about 2 s for RTSP here); it never stops the other readers. A video file is
played at its own rate (or the camera's cap) and looped, like a camera that never ends.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from facemask.serving.live.tracker import LatestFrame
from facemask.video.watch.cameras import Camera
from facemask.video.watch.decode import StreamError, open_stream
from facemask.video.watch.urls import scrubbed

BACKOFF_S = (0.25, 0.5, 1.0)
# Further behind its stream than this, a reader decodes keyframes only until it catches up.
LAG_LIMIT_S = 0.5
COUNTS = ("offered", "decoded", "skipped_by_cap", "skipped_behind", "fell_behind", "reconnects", "failures")
FILE_FPS_FALLBACK = 15.0


class CameraReader:
    """Reads one camera until `stop()`; `latest()` hands over the newest frame and its metadata."""

    def __init__(
        self, camera: Camera, size: int, fast_decode: bool = False, fresh: threading.Event | None = None
    ) -> None:
        """fresh: set whenever a frame comes; shared by the cameras of one reader process (ReaderGroup)."""
        self.camera, self.size, self.fast_decode = camera, size, fast_decode
        self.slot = LatestFrame()
        self.stopping, self.fresh = threading.Event(), fresh or threading.Event()
        self.counts = dict.fromkeys(COUNTS, 0)
        self.behind = False
        self.ms = {"decode": 0.0, "resize": 0.0}
        self.state, self.error, self.source_size = "connecting", None, None
        self.connected_at: float | None = None
        self.thread = threading.Thread(target=self._run, name=f"camera-{camera.id}", daemon=True)
        self.thread.start()

    def latest(self) -> tuple[dict | None, np.ndarray | None]:
        """(metadata, RGB frame) of the newest frame not yet taken, or (None, None)."""
        item = self.slot.take()
        return (None, None) if item is None else self._prepared(item)

    def status(self) -> dict[str, Any]:
        return {
            "id": self.camera.id,
            "pid": os.getpid(),
            "state": self.state,
            "error": self.error,
            "source_size": self.source_size,
            "connected_at": self.connected_at,
            "dropped": self.slot.dropped,
            **self.counts,
            "decode_ms": round(self.ms["decode"], 1),
            "resize_ms": round(self.ms["resize"], 1),
        }

    def stop(self, wait: bool = True) -> dict[str, Any]:
        """Stop reading; wait (5 s at most) for the stream to close unless `wait` is False."""
        self.stopping.set()
        self.fresh.set()
        if wait:
            self.thread.join(timeout=5)
        return self.status()

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                stream = open_stream(self.camera.url, self.camera.transport, self.fast_decode)
            except StreamError as exc:
                stream, self.error = None, scrubbed(str(exc), self.camera.url)
            if stream is not None:
                self.state, self.error, self.connected_at = "live", None, time.time()
                if self.counts["decoded"] or failures:
                    self.counts["reconnects"] += 1
                try:
                    got_frames = self._read(stream)
                except StreamError as exc:
                    got_frames, self.error = True, scrubbed(str(exc), self.camera.url)
                except Exception as exc:  # a bug must not leave the camera "live" and silent: say it, retry
                    got_frames, self.error = (
                        False,
                        scrubbed(f"the reader failed: {type(exc).__name__}: {exc}", self.camera.url),
                    )
                finally:
                    stream.close()
                failures = 0 if got_frames else failures + 1
                if self.stopping.is_set():
                    break
                self.error = self.error or "the stream ended"
            else:
                failures += 1
            self.counts["failures"] += 1
            self.state = "retrying"
            self.stopping.wait(BACKOFF_S[min(failures, len(BACKOFF_S)) - 1] if failures else BACKOFF_S[0])
        self.state = "stopped"

    def _read(self, stream) -> bool:
        """Read until the stream ends or a stop; True if any frame came. StreamError when it fails."""
        native = stream.fps or (FILE_FPS_FALLBACK if self.camera.is_file else None)
        cap = 1.0 / self.camera.fps if self.camera.fps else 0.0
        # Without timestamps that keep time, a frame is due as it comes: no lag can be measured.
        period = 1.0 / native if native and stream.clocked else 0.0
        clock = StreamClock(period, live=not self.camera.is_file)
        got, next_kept = False, 0.0
        while not self.stopping.is_set():
            cpu = time.thread_time()
            frame = stream.read()
            if frame is None:
                if self.camera.is_file and got and stream.rewind():
                    clock = StreamClock(clock.period, live=False)
                    continue
                return got
            decode_s, got = time.thread_time() - cpu, True
            due = clock.due(stream.timestamp(frame) if stream.clocked else None)
            if self.camera.is_file and due > time.time():
                self.stopping.wait(due - time.time())  # a file plays at its own rate, as a camera would
            captured = min(due, time.time())  # a live frame that waited for us was captured earlier
            self.counts["offered"] += 1 + clock.skipped
            self._keep_up(stream, clock)
            if cap:
                if captured < next_kept - cap / 4:
                    self.counts["skipped_by_cap"] += 1  # over the cap: decoded (H.264 needs it), not sent
                    continue
                next_kept = max(next_kept + cap, captured - cap)
            self._keep(stream, frame, captured, decode_s)
        return got

    def _keep_up(self, stream, clock: "StreamClock") -> None:
        """Decode only keyframes while this reader is over LAG_LIMIT_S behind its stream (the CPU
        cannot decode every frame), and every frame again once it has caught up: the camera's
        frame rate drops, its latency stays bounded and the other cameras keep their share."""
        lag = clock.behind_s
        if not self.behind and lag > LAG_LIMIT_S:
            self.behind = stream.keyframes_only(True)
            self.counts["fell_behind"] += 1
        elif self.behind and lag < max(clock.period, 0.1):
            self.behind = not stream.keyframes_only(False)
        self.counts["skipped_behind"] += clock.skipped

    def _keep(self, stream, frame: Any, captured: float, decode_s: float) -> None:
        """decode_s: this thread's CPU time for the frame (a wait for the network is not decoding)."""
        self.counts["decoded"] += 1
        self.ms["decode"] += decode_s * 1000
        self.source_size = list(stream.size(frame))
        self.slot.put((self.counts["decoded"], captured, decode_s, frame, stream.to_rgb, self.source_size))
        self.fresh.set()

    def _prepared(self, item: tuple) -> tuple[dict, np.ndarray]:
        """The frame shrunk to the model's size, in RGB, with its metadata: done only for the frames
        the model takes, not for those a newer one replaced."""
        index, captured, decode_s, frame, to_rgb, (w, h) = item
        t0 = time.thread_time()
        scale = min(1.0, self.size / max(h, w))
        # Even sizes: the chroma planes are half the size of the picture.
        rgb = to_rgb(frame, max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2))
        resize_s = time.thread_time() - t0
        self.ms["resize"] += resize_s * 1000
        meta = {
            "camera": self.camera.id,
            "index": index,
            "captured": captured,
            "decode_ms": decode_s * 1000,
            "resize_ms": resize_s * 1000,
            "scale": scale,
            "width": rgb.shape[1],
            "height": rgb.shape[0],
            "source_size": [w, h],
        }
        return meta, rgb


class StreamClock:
    """A stream's time against the wall clock: when each frame was due, and how far behind we are.

    A file is anchored at its first frame. A live stream is anchored at the earliest a frame has
    ever arrived relative to its timestamp, so a burst of frames buffered at connection does not
    count as being ahead, and network jitter does not count as falling behind."""

    def __init__(self, period: float, live: bool) -> None:
        self.period, self.live = period, live
        self.anchor: float | None = None  # wall time of the stream's time 0
        self.last: float | None = None
        self.skipped = 0  # frames the decoder skipped before the latest one (keyframes only)
        self.behind_s = 0.0

    def due(self, timestamp: float | None) -> float:
        now = time.time()
        if timestamp is None and not self.period:  # no timestamps, no rate: each frame is due as it comes
            self.skipped, self.behind_s = 0, 0.0
            return now
        if timestamp is None:  # no timestamps: one period after the last frame
            timestamp = (self.last + self.period) if self.last is not None else 0.0
        gap = timestamp - self.last if self.last is not None else self.period
        self.skipped = max(0, round(gap / self.period) - 1) if self.period and gap > 0 else 0
        self.last = timestamp
        if self.anchor is None or (self.live and now - timestamp < self.anchor):
            self.anchor = now - timestamp
        self.behind_s = now - (self.anchor + timestamp)
        return self.anchor + timestamp
