"""`facemask predict` on a live camera or stream, in this process, as it arrives.

    facemask predict 0 --model-uri models:/facemask-detector@champion --out DIR --max-seconds 60

A camera index (`0`) or a stream URL (`rtsp://`, `http://` MJPEG, ...): a reader thread
keeps only the newest frame (the ones the model had no time for are dropped and counted),
until the stream ends, --max-frames or --max-seconds. DIR gets what `batch_predict` writes
for a video: `detections.jsonl` with a `track_id` per face, `annotated.mp4` and
`summary.json` with the people seen per mask state.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace

import numpy as np

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import InputNotFoundError
from facemask.core.operating_point import lowest, shown_thresholds
from facemask.core.settings import INFERENCE, PredictConfig
from facemask.serving.live.tracker import TRACK_CONF, LatestFrame, PeopleTracker
from facemask.video.batch import Annotator, PredictResult, annotate, finish, record, start_run

log = logging.getLogger(__name__)


def open_stream(source: str):
    """An OpenCV capture of a camera index or stream URL; InputNotFoundError naming it if it cannot open."""
    import cv2

    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        capture.release()
        what = f"camera {source}" if source.isdigit() else source
        raise InputNotFoundError(
            f"{what}: OpenCV could not open it; check the camera index or the URL, and that the stream is up"
        )
    return capture


class StreamReader:
    """Reads a capture on its own thread as fast as the source delivers, keeping only the newest
    frame (with its index and time since `started`), so the model always gets the newest one.

    Only the reader thread releases the capture, when it leaves its loop: releasing it from
    another thread while `read()` is blocked on a stalled stream crashed the process at a stop.
    """

    def __init__(self, capture, started: float, join_s: float = 5.0) -> None:
        self.capture, self.started, self.join_s = capture, started, join_s
        self.slot, self.stopping = LatestFrame(), threading.Event()
        self.frames, self.ended = 0, False
        self.thread = threading.Thread(target=self._read, name="stream-reader", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while not self.stopping.is_set():
                ok, frame = self.capture.read()
                if not ok:
                    break
                self.slot.put((self.frames, time.perf_counter() - self.started, frame))
                self.frames += 1
        finally:
            self.ended = True
            self.capture.release()

    def stop(self) -> bool:
        """Ask the reader to stop and wait up to join_s; False when it is still blocked in a read
        (a stalled stream): it releases the capture itself when the read returns or times out."""
        self.stopping.set()
        self.thread.join(timeout=self.join_s)
        if self.thread.is_alive():
            log.warning("the stream's reader is blocked in a read; it will close the stream when the read returns")
            return False
        return True


class AnnotatedVideo:
    """An mp4 of the annotated frames, opened at the first frame's size; nothing when `path` is None."""

    def __init__(self, path, fps: float) -> None:
        self.path, self.fps, self.writer = path, fps, None

    def write(self, image, found: list[dict]) -> None:
        import cv2

        if self.path is None:
            return
        drawn = cv2.cvtColor(np.asarray(annotate(image, found)), cv2.COLOR_RGB2BGR)
        if self.writer is None:
            size = (drawn.shape[1], drawn.shape[0])
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
        self.writer.write(drawn)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def predict_stream(cfg: PredictConfig) -> PredictResult:
    """Detect and track faces on a live camera or stream until it ends or a limit is reached."""
    import cv2

    cfg, info, started = start_run(cfg)
    capture = open_stream(str(cfg.source))
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if 1 <= fps <= 120 else 25.0  # cameras and MJPEG streams often report 0 or nonsense
    annotator = Annotator(replace(cfg, engine="local"))
    tracker = PeopleTracker(frame_rate=fps)
    shown = shown_thresholds(cfg.conf, annotator.detector.point, INFERENCE.conf)
    totals = {name: 0 for name in CLASS_NAMES}
    jsonl, annotated = cfg.out / "detections.jsonl", (cfg.out / "annotated.mp4" if cfg.save else None)
    video, processed = AnnotatedVideo(annotated, fps), 0
    reader = StreamReader(capture, started)
    try:
        with jsonl.open("w") as f:
            while cfg.max_frames is None or processed < cfg.max_frames:
                if cfg.max_seconds is not None and time.perf_counter() - started >= cfg.max_seconds:
                    break
                item = reader.slot.take()
                if item is None:
                    if reader.ended:
                        break
                    time.sleep(0.002)
                    continue
                index, at, frame = item
                image = rgb_image(frame)
                found = tracker.update(
                    annotator.detect([image], conf=min(lowest(shown), TRACK_CONF))[0], show_conf=shown, at=at
                )
                entry = record(found, {"frame": index, "time_s": round(at, 3)})
                f.write(json.dumps(entry) + "\n")
                processed += 1
                for name, n in entry["counts"].items():
                    totals[name] += n
                video.write(image, found)
    except KeyboardInterrupt:
        log.warning("stopped by Ctrl-C after %d frames; writing what was seen", processed)
    finally:
        reader.stop()
        video.close()
    frames = {"read": reader.frames, "processed": processed, "dropped": reader.slot.dropped}
    counts = {"items": processed, "detections": totals, "people": tracker.summary(), "frames": frames}
    return finish(cfg, info, started, kind="stream", jsonl=jsonl, annotated=annotated, **counts)


def rgb_image(frame: np.ndarray):
    import cv2
    from PIL import Image

    return Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
