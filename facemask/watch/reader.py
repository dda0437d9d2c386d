"""One camera's reader: decodes its stream on a thread, keeps only the newest frame, reconnects.

`facemask watch` runs one per camera as a Ray actor, anywhere in the cluster. The model takes
the newest frame when it is ready for it (`latest`); a frame that a newer one replaced first
is dropped and counted. Frames travel to the detector as arrays in Ray's object store, shrunk
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

from facemask.live.tracker import LatestFrame
from facemask.watch.cameras import Camera

BACKOFF_S = (0.25, 0.5, 1.0)
OPEN_TIMEOUT_MS = 5000
# A stream that sends nothing for this long is treated as dead and opened again.
READ_TIMEOUT_MS = 3000
FILE_FPS_FALLBACK = 15.0


class CameraReader:
    """Reads one camera until `stop()`; `latest()` hands over the newest frame and its metadata."""

    def __init__(self, camera: Camera, size: int) -> None:
        self.camera, self.size = camera, size
        self.slot = LatestFrame()
        self.stopping = threading.Event()
        self.counts = {"decoded": 0, "skipped_by_cap": 0, "reconnects": 0, "failures": 0, "offered": 0}
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
            "state": self.state,
            "error": self.error,
            "source_size": self.source_size,
            "connected_at": self.connected_at,
            "dropped": self.slot.dropped,
            **self.counts,
            "decode_ms": round(self.ms["decode"], 1),
            "resize_ms": round(self.ms["resize"], 1),
        }

    def stop(self) -> dict[str, Any]:
        self.stopping.set()
        self.thread.join(timeout=5)
        return self.status()

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            capture = self._open()
            if capture is not None:
                self.state, self.error, self.connected_at = "live", None, time.time()
                if self.counts["decoded"] or failures:
                    self.counts["reconnects"] += 1
                got_frames = self._read(capture)
                capture.release()
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

    def _open(self):
        import cv2

        url = self.camera.url
        try:
            if url.isdigit():
                capture = cv2.VideoCapture(int(url))
            else:
                if url.lower().startswith("rtsp"):
                    # Read by OpenCV's FFmpeg when it opens the stream; this process reads one camera.
                    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{self.camera.transport}"
                timeouts = [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                    OPEN_TIMEOUT_MS,
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                    READ_TIMEOUT_MS,
                ]
                capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, timeouts)
        except cv2.error as exc:
            self.error = f"OpenCV could not open it: {exc}"
            return None
        if not capture.isOpened():
            capture.release()
            self.error = "could not open it (check the URL, and that the stream is up)"
            return None
        return capture

    def _read(self, capture) -> bool:
        """Read until the stream fails or a stop; True if any frame came."""
        import cv2

        fps = self.camera.fps
        if self.camera.is_file:
            native = capture.get(cv2.CAP_PROP_FPS)
            fps = fps or (native if 1 <= native <= 240 else FILE_FPS_FALLBACK)
        period = 1.0 / fps if fps else 0.0
        started, index, got, next_kept = time.time(), 0, False, 0.0
        while not self.stopping.is_set():
            due = started + index * period
            if self.camera.is_file and due > time.time():
                self.stopping.wait(due - time.time())  # a file plays at its rate, as a camera would
            cpu = time.thread_time()
            if not capture.grab():
                if self.camera.is_file and got and capture.set(cv2.CAP_PROP_POS_FRAMES, 0):
                    started, index = time.time(), 0
                    continue
                return got
            # A live frame is captured when it arrives: grab() waits for it, then decodes it.
            received = due if self.camera.is_file else time.time()
            got, index = True, index + 1
            self.counts["offered"] += 1
            if period and not self.camera.is_file:
                if received < next_kept - period / 4:
                    self.counts["skipped_by_cap"] += 1  # over the cap: decoded (H.264 needs it), not sent
                    continue
                next_kept = max(next_kept + period, received - period)
            ok, frame = capture.retrieve()
            if not ok:
                return got
            self._keep(frame, received, time.thread_time() - cpu)
        return got

    def _keep(self, frame: np.ndarray, captured: float, decode_s: float) -> None:
        """decode_s: this thread's CPU time for the frame (a wait for the network is not decoding)."""
        self.counts["decoded"] += 1
        self.ms["decode"] += decode_s * 1000
        self.source_size = [frame.shape[1], frame.shape[0]]
        self.slot.put((self.counts["decoded"], captured, decode_s, frame))

    def _prepared(self, item: tuple) -> tuple[dict, np.ndarray]:
        """The frame shrunk to the model's size, in RGB, with its metadata: done only for the frames
        the model takes, not for those a newer one replaced."""
        import cv2

        index, captured, decode_s, frame = item
        t0 = time.perf_counter()
        h, w = frame.shape[:2]
        scale = min(1.0, self.size / max(h, w))
        if scale < 1:
            frame = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        resize_s = time.perf_counter() - t0
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
