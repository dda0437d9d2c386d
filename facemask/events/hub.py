"""What `facemask watch` holds for events: a tracker of events per camera, the evidence
store and the outbox with its sinks. The watch feeds it each processed frame's people; the
hub writes the snapshot when an event starts, and puts the start (the alert) and the end
into the outbox, which delivers them from a thread of its own.

Files, under the watch's `--out`: `events/outbox.sqlite` (the outbox, and each event's latest
message: for review, and for the events a killed watch left open), `events/<camera>/<key>.jpg`
(snapshots), `events/<camera>/<key>.webm` (clips, when the section asks for them), `events.jsonl`
(every start and end, as sent). An end message names its clip when the clip is written by then.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from facemask.events.clips import ClipRecorder
from facemask.events.evidence import EvidenceStore, snapshot
from facemask.events.outbox import Outbox
from facemask.events.people import Event, PersonEvents
from facemask.events.rules import EventsConfig

log = logging.getLogger("facemask.events")


class Changes:
    """A count of the review's changes (each start, end and acknowledgement) that readers wait
    on: the review page learns of an alert when it happens instead of at its next poll."""

    def __init__(self) -> None:
        self.seq = 0
        self.condition = threading.Condition()

    def bump(self) -> None:
        with self.condition:
            self.seq += 1
            self.condition.notify_all()

    def wait(self, after: int, timeout_s: float) -> int:
        """The count once it passes `after`, or as it is when `timeout_s` runs out."""
        with self.condition:
            self.condition.wait_for(lambda: self.seq > after, timeout_s)
            return self.seq


class EventHub:
    def __init__(
        self,
        cfg: EventsConfig,
        out: Path,
        model_version: str | None,
        sinks: list | None = None,
        on_message: Callable[[dict], None] | None = None,
    ) -> None:
        """`on_message(message)`: told of every start and end once it is in the outbox (metrics)."""
        self.cfg, self.out, self.model_version, self.on_message = cfg, out, model_version, on_message
        self.run_id = uuid.uuid4().hex[:8]  # in every key: a restarted watch never reuses one
        self.cameras: dict[str, PersonEvents] = {}
        self.evidence = EvidenceStore(out / "events", cfg.max_mb * 1e6, cfg.max_age_days * 86400)
        (out / "events").mkdir(parents=True, exist_ok=True)
        (out / "events").chmod(0o700)  # snapshots are of people: the owner's alone, as the sample pool
        self.changes = Changes()
        # A clip lands after_s past its alert: the review page is told, as of a start or an end.
        self.clips = None if cfg.clip is None else ClipRecorder(cfg.clip, self.evidence, lambda _: self.changes.bump())
        self.outbox = Outbox(
            out / "events" / "outbox.sqlite", default_sinks(cfg, self.run_id) if sinks is None else sinks
        )
        self.log_path = out / "events.jsonl"
        self.counts = {"started": 0, "ended": 0, "snapshot_errors": 0, "errors": 0}
        self.final: dict[str, Any] | None = None  # the summary as the outbox closed
        self._end_left_open()
        self.outbox.start()

    def _end_left_open(self) -> None:
        """Events a killed watch left open end now, with their own key: nothing is lost or doubled."""
        for start in self.outbox.left_open():
            end = {**start, "key": f"{start['event']}:end", "kind": "end", "end": round(time.time(), 3)}
            end["end_reason"] = "the watch stopped before the event ended; ended when it started again"
            self._put(end)

    def frame(
        self,
        camera: str,
        people: list[dict],
        at: float,
        frame: Any,
        fetch: Callable[[Any], Any],
        faces: list[dict] | None = None,
    ) -> None:
        """One processed frame of `camera`: `people` are the shown, tracked detections, `frame`
        a handle on the image that `fetch` turns into an RGB array when a snapshot is due. Each
        detection has `track_id` (None while unconfirmed), `label`, `confidence` and `box`.
        `faces`: every face the model found in the frame, shown or not, in the zone or not (all
        of them are blurred in a snapshot); default `people`."""
        try:
            self._frame(camera, people, at, frame, fetch, people if faces is None else faces)
        except Exception:  # noqa: BLE001 - a fault here must not stop the watch counting compliance
            self.counts["errors"] += 1
            log.exception("camera %s: events of a frame failed (%d so far)", camera, self.counts["errors"])

    def _frame(self, camera: str, people: list[dict], at: float, frame: Any, fetch: Callable, faces: list) -> None:
        events = self.cameras.get(camera)
        if events is None:
            rule, _ = self.cfg.for_camera(camera)
            events = self.cameras[camera] = PersonEvents(camera, rule, self.run_id, self.model_version)
        boxes = [d["box"] for d in faces]
        if self.clips is not None:  # before the alert it may raise: the alert's frame opens its clip
            tracked = {d["track_id"]: d["box"] for d in people if d.get("track_id") is not None}
            self.clips.offer(camera, at, frame, fetch, boxes, tracked)
        changes = []
        for d in people:
            if d.get("track_id") is None:
                continue
            best = {"frame": frame, "box": d["box"], "boxes": boxes, "at": at}
            changes += events.observe(d["track_id"], d["label"], d["confidence"], at, best)
        changes += events.tick(at)
        self._apply(camera, changes, fetch)

    def remove(self, camera: str, fetch: Callable[[Any], Any]) -> None:
        events = self.cameras.pop(camera, None)
        if self.clips is not None:
            self.clips.forget(camera)
        if events is not None:
            self._apply(camera, events.close_all(time.time(), "camera removed"), fetch)

    def close(self, fetch: Callable[[Any], Any], flush_s: float = 2.0) -> None:
        """A stop: every open event ends, then the outbox gets `flush_s` to deliver."""
        if self.clips is not None:  # written first, so that the end messages name them
            self.clips.close()
        now = time.time()
        for camera, events in list(self.cameras.items()):
            self._apply(camera, events.close_all(now), fetch)
        self.outbox.stop(flush_s, before_closing=lambda: setattr(self, "final", self.summary()))

    def _apply(self, camera: str, changes: list, fetch: Callable[[Any], Any]) -> None:
        for kind, event in changes:
            if kind == "start":
                event.snapshot = self._snapshot(camera, event, fetch)
                if self.clips is not None:
                    blur = self.cfg.for_camera(camera)[1]
                    self.clips.start(camera, event.key, event.track_id, event.last_seen, blur)
            self.counts["started" if kind == "start" else "ended"] += 1
            message = {**event.to_message(kind), "snapshot": event.snapshot}
            if self.clips is not None:
                message["clip"] = self.clip(camera, event.key)
            self._put(message)

    def clip(self, camera: str, key: str) -> str | None:
        """Where the event's clip is, relative to the watch's --out; None until it is written (or
        when clips are off, or it was pruned)."""
        path = self.evidence.path(camera, key, ".webm")
        return str(path.relative_to(self.out)) if self.clips is not None and path.is_file() else None

    def _put(self, message: dict) -> None:
        self.outbox.put(message)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(message, sort_keys=True) + "\n")
        self.changes.bump()
        if self.on_message is not None:
            self.on_message(message)

    def _snapshot(self, camera: str, event: Event, fetch: Callable[[Any], Any]) -> str | None:
        best = event.best
        if best is None:
            return None
        _, blur = self.cfg.for_camera(camera)
        try:
            image = fetch(best["frame"])
            jpeg = snapshot(image, best["boxes"], best["box"], blur)
            path = self.evidence.write(camera, event.key, jpeg)
        except Exception as exc:  # noqa: BLE001 - the alert goes out without its picture
            self.counts["snapshot_errors"] += 1
            log.warning("camera %s: no snapshot for event %s: %s", camera, event.key, exc)
            return None
        finally:
            event.best = None  # the frame is let go: memory stays bounded however long an event lasts
        return str(path.relative_to(self.out))

    def summary(self) -> dict[str, Any]:
        if self.final is not None:
            return self.final
        return {
            **self.counts,
            "open": sum(len(e.open) for e in self.cameras.values()),
            "delivery": dict(self.outbox.counts),
            "backlog": self.outbox.backlog(),
            "snapshots_pruned": self.evidence.pruned,
            "clips": None if self.clips is None else self.clips.summary(),
        }


def default_sinks(cfg: EventsConfig, run_id: str) -> list:
    from facemask.events.sinks import MqttSink, WebhookSink

    sinks: list = []
    if cfg.webhook is not None:
        sinks.append(WebhookSink(cfg.webhook))
    if cfg.mqtt is not None:
        sinks.append(MqttSink(cfg.mqtt, client_id=f"facemask-watch-{run_id}"))
    return sinks
