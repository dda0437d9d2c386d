"""What the watch does with each processed frame beyond counting: violation events
(facemask.events, the camera list's `events:` section), samples for labelling
(facemask.learning, its `sampling:` section) and drift (always: a few counters per camera).
Events and samples are off unless their section is there; neither ever delays the watch:
events go through the outbox's thread, samples through the pool's queue (full: dropped and
counted)."""

from __future__ import annotations

from typing import Any

import numpy as np

from facemask.core.settings import WatchConfig
from facemask.video.watch.cameras import load_events, load_sampling


class Production:
    def __init__(self, cfg: WatchConfig, model: dict, metrics: Any = None) -> None:
        from facemask.events.hub import EventHub
        from facemask.learning.drift import DriftMonitor
        from facemask.learning.pool import SamplePool
        from facemask.learning.sampler import Sampler

        self.cfg, self.version = cfg, model.get("uri")
        events, sampling = load_events(cfg.cameras), load_sampling(cfg.cameras)
        announce = metrics.event if metrics else None
        self.events = None if events is None else EventHub(events, cfg.out, self.version, on_message=announce)
        thresholds = model.get("thresholds") or {}  # the version's operating point, if it has one
        self.drift = DriftMonitor(model.get("reference"), thresholds, cfg.conf)
        self.sampler = self.pool = None
        if sampling is not None:
            self.sampler = Sampler(sampling, thresholds, default=cfg.conf)
            self.pool = SamplePool(cfg.out / "samples", sampling, fetch)

    def frame(self, camera: str, shown: list[dict], found: list[dict], captured: float, frame_ref) -> None:
        """`shown`: the tracked people shown (with `track_id`); `found`: every face the model found."""
        self.drift.update(camera, found, captured)
        if self.events is not None:
            self.events.frame(camera, shown, captured, frame_ref, fetch, faces=found)
        if self.sampler is not None:
            # Faces under the shown threshold have no track; they count for the band around it.
            weak = [dict(d, track_id=None) for d in found if d["confidence"] < self.cfg.conf]
            reasons = self.sampler.decide(camera, shown + weak, captured)
            if reasons:
                labels = [d for d in found if d["confidence"] >= self.cfg.conf]  # the pre-labels: what it answers
                self.pool.offer(camera, frame_ref, labels, reasons, {"at": captured, "model_version": self.version})

    def remove(self, camera: str) -> None:
        self.drift.forget(camera)
        if self.events is not None:
            self.events.remove(camera, fetch)

    @property
    def outbox(self):
        return self.events.outbox if self.events is not None else None

    def close(self) -> None:
        """A stop: open events end and the outbox gets 2 s; queued samples get 2 s to be written."""
        if self.events is not None:
            self.events.close(fetch)
        if self.pool is not None:
            self.pool.close()

    def drift_figures(self, now: float) -> dict[str, dict | None]:
        """Each camera's drift (facemask.learning.drift.DriftMonitor.figures)."""
        return {camera: self.drift.figures(camera, now) for camera in list(self.drift.windows)}

    def summary(self) -> dict[str, Any]:
        import time

        out: dict[str, Any] = {"events": self.events.summary() if self.events is not None else None}
        out["drift"] = self.drift_figures(time.time())
        if self.sampler is not None:
            out["samples"] = {**dict(self.sampler.counts), **dict(self.pool.counts)}
        return out


def fetch(frame_ref) -> np.ndarray:
    """A frame held by Ray (a watch.groups.FrameRef), for a snapshot, a clip or a sample."""
    return frame_ref.get(timeout=5)
