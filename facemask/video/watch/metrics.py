"""The watch's metrics, exported by Ray's metrics agent beside the endpoint's (docs/operating.md).

People and compliance use the endpoint's names (`facemask_live_people`, `facemask_live_compliance_ratio`)
with the camera id as `stream`, from the last closed window; the rest are the watch's own.
Gauges are set again every second (Ray drops a gauge not set for about 20 s, which took a
camera's compliance off the scrape between 60 s windows) and retired when a camera is
removed or the watch stops (`serving.metrics` says how).
"""

from __future__ import annotations

from facemask.serving.metrics import LATENCY_BOUNDS, NAN, LiveGauges


class WatchMetrics:
    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self.live = LiveGauges()
        self.last: dict[str, dict] = {}  # camera -> its last closed window's row
        self.frames = Counter(
            "facemask_camera_frames",
            description="A camera's frames: processed by the model, or dropped (a newer one replaced them).",
            tag_keys=("camera", "outcome"),
        )
        self.up = Gauge(
            "facemask_camera_up", description="1 while a camera's stream is being read.", tag_keys=("camera",)
        )
        self.events = Counter(
            "facemask_events",
            description="Violation events per camera and state: kind=start (an alert) or end.",
            tag_keys=("camera", "state", "kind"),
        )
        self.backlog = Gauge(
            "facemask_event_backlog",
            description="Event messages not yet taken by a sink (webhook, mqtt): the outbox's backlog.",
            tag_keys=("sink",),
        )
        self.oldest = Gauge(
            "facemask_event_oldest_pending_seconds",
            description="Age of the oldest event message not yet delivered (0 when none waits).",
            tag_keys=(),
        )
        self.drift = Gauge(
            "facemask_drift_psi",
            description="Population stability index of a camera's answers against val: kind=class_mix or score.",
            tag_keys=("camera", "kind"),
        )
        self.latency = Histogram(
            "facemask_camera_latency_seconds",
            description="From a frame's capture to its detections, across cameras.",
            boundaries=LATENCY_BOUNDS,
            tag_keys=(),
        )

    def window(self, row: dict) -> None:
        self.live.set(row["camera"], row["by_class"], row["compliance"])
        self.last[row["camera"]] = row

    def refresh(self, production=None) -> None:
        """The last window's people and compliance of every camera, set again (see the docstring),
        each camera's drift, and the event outbox's backlog when events are on."""
        import time

        for camera, row in self.last.items():
            self.live.set(camera, row["by_class"], row["compliance"])
        if production is None:
            return
        for camera, figures in production.drift_figures(time.time()).items():
            for kind in ("class_mix", "score"):
                self.drift.set(NAN if figures is None else figures[kind], tags={"camera": camera, "kind": kind})
        outbox = production.outbox
        if outbox is not None:
            for sink, waiting in outbox.backlog().items():
                self.backlog.set(waiting, tags={"sink": sink})
            self.oldest.set(outbox.oldest_pending_s(), tags={})

    def event(self, message: dict) -> None:
        self.events.inc(1, tags={"camera": message["camera"], "state": message["state"], "kind": message["kind"]})

    def processed(self, camera: str, latency_s: float) -> None:
        self.frames.inc(1, tags={"camera": camera, "outcome": "processed"})
        self.latency.observe(latency_s)

    def dropped(self, camera: str, count: int) -> None:
        if count > 0:
            self.frames.inc(count, tags={"camera": camera, "outcome": "dropped"})

    def camera_up(self, camera: str, up: bool) -> None:
        self.up.set(1.0 if up else 0.0, tags={"camera": camera})

    def retire(self, camera: str) -> None:
        """The camera is no longer watched: its gauges leave the export."""
        self.last.pop(camera, None)
        self.live.retire(camera)
        self.up.set(NAN, tags={"camera": camera})
        for kind in ("class_mix", "score"):
            self.drift.set(NAN, tags={"camera": camera, "kind": kind})
