"""The sample pool: kept frames on disk, each with the model's boxes as pre-labels.

    <pool>/<camera>/<time ms>-<id>.jpg    the frame as the model saw it (faces kept or blurred,
                                         as the `sampling:` section's `faces` says)
    <pool>/<camera>/<time ms>-<id>.json   {camera, at, model_version, reasons, width, height,
                                         faces, detections: [{label, confidence, box}]}

Writing never delays the watch: `offer` puts the frame on a bounded queue that a thread of its
own empties (fetching the frame, encoding, writing) at the lowest CPU priority; a full queue
drops the sample and counts it. The folder stays within `max_mb` and `max_age_days` (the oldest go first). Made readable
by its owner only: the pool may hold faces.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from facemask.core.runtime import lowest_priority_thread
from facemask.events.evidence import EvidenceStore, blur_faces
from facemask.learning.sampler import SamplingRule

log = logging.getLogger("facemask.learning")
QUEUE = 32  # frames waiting to be written; more are dropped (and counted)


class SamplePool:
    def __init__(self, root: Path, rule: SamplingRule, fetch: Callable[[Any], Any]) -> None:
        # Imported here, never first in the writer thread: OpenCV's loader sets sys.path back to a
        # copy it took when it began, which undoes what another thread's import added meanwhile
        # (Ray's vendored packages went missing that way).
        import cv2  # noqa: F401

        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self.root, self.rule, self.fetch = root, rule, fetch
        self.store = EvidenceStore(root, rule.max_mb * 1e6, rule.max_age_days * 86400)
        self.queue: queue.Queue = queue.Queue(QUEUE)
        self.counts: Counter = Counter()
        self.thread = threading.Thread(target=self._run, name="facemask-sample-pool", daemon=True)
        self.thread.start()

    def offer(self, camera: str, frame: Any, detections: list[dict], reasons: list[str], meta: dict) -> bool:
        """Queue a kept frame for writing; False (counted as `dropped`) when the queue is full."""
        try:
            self.queue.put_nowait((camera, frame, detections, reasons, meta))
        except queue.Full:
            self.counts["dropped"] += 1
            return False
        return True

    def _run(self) -> None:
        lowest_priority_thread()  # a sample is written with the CPU the watch or the replica leaves
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                self._write(*item)
                self.counts["written"] += 1
            except Exception as exc:  # noqa: BLE001 - a sample lost is counted, never the watch's end
                self.counts["failed"] += 1
                log.warning("a sample of camera %s was not written: %s", item[0], exc)
            finally:
                self.queue.task_done()

    def _write(self, camera: str, frame: Any, detections: list[dict], reasons: list[str], meta: dict) -> None:
        import cv2

        image = self.fetch(frame)
        if self.rule.faces == "blur":
            image = blur_faces(image, [d["box"] for d in detections])
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise ValueError("the frame could not be encoded as JPEG")
        key = f"{int(meta['at'] * 1000)}-{uuid.uuid4().hex[:8]}"
        sidecar = {
            "camera": camera,
            "reasons": reasons,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "faces": self.rule.faces,
            "detections": [{k: d[k] for k in ("label", "confidence", "box")} for d in detections],
            **meta,
        }
        self.store.write(camera, key, jpeg.tobytes(), sidecar)

    def close(self, wait_s: float = 2.0) -> None:
        """Write what is queued (for `wait_s` at most), then stop the writer."""
        import time

        deadline = time.monotonic() + wait_s
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass  # the writer is stuck on a slow disk: it is a daemon thread, and ends with the process
        self.thread.join(timeout=1.0)
