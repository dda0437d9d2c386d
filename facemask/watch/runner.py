"""`facemask watch`: many cameras, one batched detector, compliance per camera per time window.

    readers (one Ray actor per camera: decode, newest frame wins, reconnect)
        │ newest frame of each camera, as an object reference (no JPEG)
        ▼
    runner (this process): one batch across cameras ──► FrameDetector actor (one call at a time)
        │ detections, per camera: zone ─► ByteTrack ─► people by mask state per window
        ▼
    compliance.jsonl, summary.json, metrics, the camera grid page (`watch.page`)

Each reader has one `next_frame` call from the runner waiting in it, answered when a frame is
decoded (one call per frame, no polling). Up to 30 times a second the runner sends the frames
that came as one batch, and reads earlier batches' answers while the detector works. A camera's reader that dies is
restarted by Ray; one whose stream fails retries on its own; neither holds up the others.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facemask.settings import WatchConfig
from facemask.watch.cameras import Camera, check_sources, load_cameras
from facemask.watch.compliance import CameraCompliance

log = logging.getLogger(__name__)

CYCLE_S = 1 / 30  # the fastest the runner sends batches: frames that arrive meanwhile join the next
STATUS_S = 1.0  # how often reader statuses (and the camera list) are read
LATENCY_KEPT = 20_000  # per camera, for the percentiles in summary.json


@dataclass
class Watched:
    """One camera as the runner holds it: its reader, tracker and last frame for the page."""

    camera: Camera
    reader: Any
    compliance: CameraCompliance
    origin: str  # "file" (the YAML) or "api" (added over HTTP)
    pending: tuple | None = None  # (meta_ref, frame_ref) asked for, not yet answered
    status: dict = field(default_factory=dict)
    processed: int = 0
    dropped_reported: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_KEPT))
    tracking_ms: float = 0.0
    last: dict | None = None  # the last processed frame: ref, size, shown detections, time
    jpeg: tuple[int, bytes] | None = None
    marks: dict = field(default_factory=dict)  # the counters when the window began


@dataclass
class WatchResult:
    seconds: float
    cameras: dict[str, dict]
    windows: int
    log: Path
    summary: Path
    stopped_by: str | None = None
    lost_batches: int = 0  # batches in a detector that died (Ray restarted it)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "cameras": self.cameras,
            "windows": self.windows,
            "lost_batches": self.lost_batches,
            "files": {"log": str(self.log), "summary": str(self.summary)},
            "stopped_by": self.stopped_by,
        }


class Watch:
    """The running watch: cameras come and go (`sync`, `add`, `remove`) while `run` loops."""

    def __init__(self, cfg: WatchConfig, metrics: Any = None) -> None:
        import ray

        from facemask.watch.detector import FrameDetector
        from facemask.watch.reader import CameraReader

        self.cfg, self.metrics = cfg, metrics
        self.lock = threading.RLock()
        self.watched: dict[str, Watched] = {}
        # Two threads: one for the waiting `next_frame` call, one for `status` and `stop`.
        # A reader or the detector whose process dies is started again by Ray; a reader's calls
        # wait for it (asking for a frame again is harmless), a batch in the dead detector is lost.
        self.reader_class = ray.remote(CameraReader).options(
            num_cpus=cfg.reader_cpus, max_restarts=-1, max_task_retries=-1, max_concurrency=2
        )
        detector = ray.remote(FrameDetector).options(
            num_cpus=cfg.detector_cpus, num_gpus=cfg.detector_gpus, max_restarts=-1
        )
        self.detector = detector.remote(cfg)
        self.lost_batches = 0
        self.model = ray.get(self.detector.describe.remote())
        self.keep_windows = max(1, int(np.ceil(cfg.history_minutes * 60 / cfg.window_s)))
        self.log_path = cfg.out / "compliance.jsonl"
        self.windows, self.started = 0, time.time()
        self.list_mtime: float | None = None
        self.stopping = threading.Event()

    # --- cameras coming and going -------------------------------------------------------------

    def add(self, camera: Camera, origin: str) -> None:
        with self.lock:
            if camera.id in self.watched:
                self.remove(camera.id)
            reader = self.reader_class.remote(camera, self.cfg.imgsz, self.cfg.fast_decode)
            fps = camera.fps or 15.0
            compliance = CameraCompliance(camera.id, self.cfg.window_s, self.keep_windows, fps, self.cfg.conf)
            self.watched[camera.id] = Watched(camera, reader, compliance, origin)
            log.info("camera %s: reading %s", camera.id, camera.url)

    def remove(self, camera_id: str) -> bool:
        import ray

        with self.lock:
            watched = self.watched.pop(camera_id, None)
            if watched is None:
                return False
            row = self._close_window(watched, time.time(), partial=True)
        self._write(row)
        ray.kill(watched.reader)
        if self.metrics:
            self.metrics.camera_up(camera_id, False)
        log.info("camera %s: removed", camera_id)
        return True

    def sync(self, cameras: list[Camera]) -> dict[str, list[str]]:
        """Make the cameras from the list file these: new ones start, gone ones stop, changed ones restart
        (a new zone alone only changes the zone). Cameras added over HTTP are left alone."""
        changes: dict[str, list[str]] = {"added": [], "removed": [], "restarted": []}
        wanted = {c.id: c for c in cameras}
        with self.lock:
            for camera_id, watched in list(self.watched.items()):
                if watched.origin == "file" and camera_id not in wanted:
                    self.remove(camera_id)
                    changes["removed"].append(camera_id)
            for camera_id, camera in wanted.items():
                current = self.watched.get(camera_id)
                if current is None:
                    self.add(camera, "file")
                    changes["added"].append(camera_id)
                elif (current.camera.url, current.camera.fps, current.camera.transport) != (
                    camera.url,
                    camera.fps,
                    camera.transport,
                ):
                    self.add(camera, "file")
                    changes["restarted"].append(camera_id)
                else:
                    current.camera = camera
        return changes

    def reload(self) -> dict[str, list[str]] | None:
        """Read the camera list again if it changed; a list with a mistake is reported and not applied."""
        from facemask.errors import FacemaskError

        path = self.cfg.cameras
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        if mtime == self.list_mtime:
            return None
        self.list_mtime = mtime
        try:
            cameras = check_sources(load_cameras(path), path.parent)
        except FacemaskError as exc:
            log.error("%s; still watching the cameras from before", exc)
            return None
        return self.sync(cameras)

    # --- one cycle ------------------------------------------------------------------------------

    def submit(self) -> list[dict]:
        """Send the frames that arrived since the last cycle to the detector, in batches of max_batch.

        Each camera has one `next_frame` call waiting in its reader; those answered are this
        cycle's frames, and their cameras are asked again at once."""
        import ray

        with self.lock:
            watched = list(self.watched.values())
        if not watched:
            return []
        for w in watched:
            if w.pending is None:
                w.pending = w.reader.next_frame.options(num_returns=2).remote()
        ready, _ = ray.wait([w.pending[0] for w in watched], num_returns=len(watched), timeout=0)
        ready_set = set(ready)
        answered = [w for w in watched if w.pending[0] in ready_set]
        frames = []
        for w in answered:
            meta_ref, frame_ref = w.pending
            w.pending = w.reader.next_frame.options(num_returns=2).remote()
            try:
                meta = ray.get(meta_ref)
            except ray.exceptions.RayError as exc:
                log.warning("camera %s: its reader failed (%s); Ray restarts it", w.camera.id, type(exc).__name__)
                continue
            if meta is not None:
                frames.append((w, meta, frame_ref))
        step = self.cfg.max_batch
        return [
            {"batch": batch, "result": self.detector.detect.remote(*[ref for _, _, ref in batch])}
            for batch in (frames[i : i + step] for i in range(0, len(frames), step))
        ]

    def finish(self, sent: dict) -> None:
        """Track the detections of a batch and account for each frame."""
        import ray

        try:
            answer = ray.get(sent["result"])
        except ray.exceptions.RayActorError as exc:
            self.lost_batches += 1
            log.warning(
                "a batch of %d frames was lost with the detector (%s); Ray restarts it", len(sent["batch"]), exc
            )
            return
        now = time.time()
        with self.lock:  # the page reads the trackers from its own threads
            for (w, meta, frame_ref), found in zip(sent["batch"], answer["detections"]):
                self._account(w, meta, frame_ref, found, now)

    def _account(self, w: Watched, meta: dict, frame_ref, found: list[dict], now: float) -> None:
        t0 = time.perf_counter()
        width, height = meta["width"], meta["height"]
        shown = w.compliance.update(found, w.camera.zone, width, height)
        w.tracking_ms += (time.perf_counter() - t0) * 1000
        latency = now - meta["captured"]
        w.processed += 1
        w.latencies_ms.append(latency * 1000)
        w.last = {"ref": frame_ref, "index": meta["index"], "size": [width, height], "detections": shown}
        w.last["at"], w.last["latency_ms"] = now, round(latency * 1000, 1)
        if self.metrics:
            self.metrics.processed(w.camera.id, latency)

    # --- every second ---------------------------------------------------------------------------

    def housekeeping(self, now: float) -> None:
        """Re-read the camera list if it changed, refresh the readers' statuses, close due windows."""
        import ray

        self.reload()
        with self.lock:
            watched = list(self.watched.values())
        asked = {w.reader.status.remote(): w for w in watched}
        ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=0.5)
        for ref in ready:
            w = asked[ref]
            try:
                w.status = ray.get(ref)
            except ray.exceptions.RayError:
                w.status = dict(w.status, state="restarting")
            if self.metrics:
                self.metrics.dropped(w.camera.id, w.status.get("dropped", 0) - w.dropped_reported)
                self.metrics.camera_up(w.camera.id, w.status.get("state") == "live")
            w.dropped_reported = w.status.get("dropped", w.dropped_reported)
        with self.lock:
            closed = [self._close_window(w, now) for w in watched if w.compliance.due(now)]
        for row in closed:
            self._write(row)

    def _close_window(self, w: Watched, now: float, partial: bool = False) -> dict:
        counters = {"processed": w.processed, **{k: w.status.get(k, 0) for k in ("dropped", "reconnects", "failures")}}
        extra = {k: v - w.marks.get(k, 0) for k, v in counters.items()}
        w.marks = counters
        row = w.compliance.close(now, **extra, partial=partial)
        self.windows += 1
        if self.metrics:
            self.metrics.window(row)
        return row

    def _write(self, row: dict) -> None:
        with self.log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    # --- what the page shows --------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {"cameras": [self._camera_state(w) for w in self.watched.values()], **self._about()}

    def _about(self) -> dict[str, Any]:
        return {"model": self.model, "window_s": self.cfg.window_s, "started": self.started}

    def _camera_state(self, w: Watched) -> dict[str, Any]:
        last = w.last or {}
        return {
            "id": w.camera.id,
            "url": redacted(w.camera.url),
            "zone": w.camera.zone,
            "origin": w.origin,
            "state": w.status.get("state", "connecting"),
            "error": w.status.get("error"),
            "processed": w.processed,
            **{k: w.status.get(k, 0) for k in ("decoded", "dropped", "skipped_behind", "reconnects")},
            "frame": last.get("index"),
            "size": last.get("size"),
            "latency_ms": last.get("latency_ms"),
            "detections": last.get("detections", []),
            "window": w.compliance.current(time.time()),
            "history": w.compliance.history,
        }

    def frame_jpeg(self, camera_id: str) -> bytes | None:
        """The camera's last processed frame as JPEG, made once per frame however many pages ask."""
        import cv2
        import ray

        w = self.watched.get(camera_id)
        if w is None or w.last is None:
            return None
        last = w.last
        if w.jpeg is None or w.jpeg[0] != last["index"]:
            frame = ray.get(last["ref"], timeout=5)
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
            w.jpeg = (last["index"], data.tobytes())
        return w.jpeg[1]

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> WatchResult:
        """Watch until a stop (Ctrl-C, SIGTERM, `ray job stop`) or `max_seconds`; returns the totals."""
        from facemask.lifecycle import stop_signal

        self.cfg.out.mkdir(parents=True, exist_ok=True)
        self.list_mtime = self.cfg.cameras.stat().st_mtime
        self.sync(check_sources(load_cameras(self.cfg.cameras), self.cfg.cameras.parent))
        deadline = self.started + self.cfg.max_seconds if self.cfg.max_seconds else None
        in_flight: list[dict] = []
        next_status, stopped = 0.0, None
        try:
            while not self.stopping.is_set() and (deadline is None or time.time() < deadline):
                cycle_ends = time.perf_counter() + CYCLE_S
                if time.time() >= next_status:
                    self.housekeeping(time.time())
                    next_status = time.time() + STATUS_S
                in_flight.extend(self.submit())
                self.collect(in_flight, cycle_ends)
        except KeyboardInterrupt:
            import signal

            stopped = signal.Signals(stop_signal() or signal.SIGINT).name
            log.warning("stopped by %s; closing the windows and the readers", stopped)
        finally:
            self.close(in_flight)
        return self.result(stopped)

    def collect(self, in_flight: list[dict], cycle_ends: float) -> None:
        """Finish the batches whose answers came, until the cycle ends; with two batches queued at
        the detector already, wait for the oldest (the detector is the bottleneck: ask no faster)."""
        import ray

        while in_flight:
            rest = cycle_ends - time.perf_counter()
            must_wait = len(in_flight) > 2
            ready, _ = ray.wait([in_flight[0]["result"]], timeout=None if must_wait else max(0.0, rest))
            if not ready:
                break
            self.finish(in_flight.pop(0))
        rest = cycle_ends - time.perf_counter()
        if rest > 0:
            self.stopping.wait(rest)

    def close(self, in_flight: list[dict]) -> None:
        """Read the batches in flight, write every camera's partial window, stop readers and the detector."""
        import ray

        for sent in in_flight:
            try:
                self.finish(sent)
            except Exception as exc:  # a stop's own doing (Ray going down): the frames are lost, not the rows
                log.warning("a batch was lost in the stop: %s", exc)
        now = time.time()
        with self.lock:
            watched = list(self.watched.values())
        for w in watched:
            self._write(self._close_window(w, now, partial=True))
        stops = {w.reader.stop.remote(): w for w in watched}
        ready, _ = ray.wait(list(stops), num_returns=len(stops), timeout=8)
        for ref in ready:
            try:
                stops[ref].status = ray.get(ref)
            except ray.exceptions.RayError:
                pass
        for w in watched:
            ray.kill(w.reader)
        ray.kill(self.detector)

    def result(self, stopped: str | None) -> WatchResult:
        seconds = time.time() - self.started
        cameras = {w.camera.id: camera_totals(w, seconds) for w in self.watched.values()}
        summary = self.cfg.out / "summary.json"
        result = WatchResult(seconds, cameras, self.windows, self.log_path, summary, stopped, self.lost_batches)
        summary.write_text(json.dumps(result.to_dict() | {"model": self.model}, indent=2))
        return result


def camera_totals(w: Watched, seconds: float) -> dict[str, Any]:
    """One camera's frames, latency percentiles and CPU per frame by stage, for summary.json."""
    status, latencies = w.status, np.array(w.latencies_ms or [np.nan])
    decoded = max(1, status.get("decoded", 0))
    return {
        "state": status.get("state"),
        "processed": w.processed,
        "dropped": status.get("dropped", 0),
        "decoded": status.get("decoded", 0),
        "reconnects": status.get("reconnects", 0),
        "processed_fps": round(w.processed / seconds, 2) if seconds else 0.0,
        "latency_ms": {"p50": _round(np.nanpercentile(latencies, 50)), "p99": _round(np.nanpercentile(latencies, 99))},
        "ms_per_frame": {
            "decode": round(status.get("decode_ms", 0.0) / decoded, 2),
            "resize": round(status.get("resize_ms", 0.0) / max(1, w.processed), 2),
            "tracking": round(w.tracking_ms / max(1, w.processed), 2),
        },
    }


def _round(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 1)


def redacted(url: str) -> str:
    """A URL with its password replaced, for pages and logs (camera URLs often carry credentials)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
