"""The watch's model: one Ray actor that detects faces in a batch of frames from many cameras.

Frames arrive as Ray object references (one per reader process, holding its cameras' frames),
which Ray resolves in this process from its object store (no copy on the same node, no JPEG
anywhere). The actor runs one call at a time, as a GPU does; the runner sends the next batch
before it reads this one's answer.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from facemask.core.settings import WatchConfig
from facemask.serving.live.tracker import TRACK_CONF


class FrameDetector:
    """Holds the model (`facemask.detection.detector.Detector`) or the simulated GPU behind `detect`."""

    def __init__(self, cfg: WatchConfig) -> None:
        from facemask.core.runtime import resolve_device
        from facemask.serving.simulated_gpu import NAME as SIMULATED

        self.imgsz = cfg.imgsz
        if cfg.backend == SIMULATED:
            from facemask.serving.simulated_gpu import SimulatedGPU, parse_latency

            self.model: Any = SimulatedGPU(parse_latency(cfg.simulated_latency))
        else:
            from facemask.detection.detector import load_detector

            device = resolve_device(cfg.device) if cfg.backend == "pt" else "cpu"
            self.model = load_detector(
                cfg.model_uri, device, cfg.backend, threads=cfg.threads, warm=True, tracking_uri=cfg.tracking_uri
            )
        self.info = {"uri": self.model.info.uri, "device": str(self.model.device), "backend": cfg.backend}
        self.info["pid"] = os.getpid()
        # The version's operating point (a threshold per class), which sampling's band centres on.
        point = getattr(self.model, "point", None)
        self.info["thresholds"] = dict(point.conf) if point is not None else None
        # ... and what it answered on val there, which the drift monitor compares each camera with.
        self.info["reference"] = point.scores.get("reference") if point is not None else None

    def describe(self) -> dict[str, Any]:
        return self.info

    def detect(self, picks: list[tuple[int, int]], *groups: list[np.ndarray]) -> dict[str, Any]:
        """Detections (down to the tracker's threshold) for each frame picked, and the call's own
        times. `groups`: what reader processes' calls returned (each a list of frames, resolved by
        Ray); `picks`: (group, index) of each frame of the batch, in order."""
        started, cpu = time.time(), time.process_time()
        frames = [groups[group][index] for group, index in picks]
        found = self.model.predict(frames, conf=TRACK_CONF, imgsz=self.imgsz)
        return {
            "detections": [[d.to_dict() for d in per_frame] for per_frame in found],
            "started": started,
            "ended": time.time(),
            "cpu_ms": (time.process_time() - cpu) * 1000,
        }
