"""`facemask watch`: many cameras, one batched detector, compliance per camera per time window.

    readers (Ray actors, up to --cameras-per-reader cameras each: decode, newest frame wins, reconnect)
        │ newest frame of each camera, in one object per reader process (no JPEG)
        ▼
    runner (this process): one batch across cameras ──► FrameDetector actor (one call at a time)
        │ detections, per camera: zone ─► ByteTrack ─► people by mask state per window
        ▼
    compliance.jsonl, summary.json, metrics, the camera grid page (`watch.page`)

Each reader process has one `next_frames` call from the runner waiting in it, answered when a
frame is decoded, with the newest frame of each of its cameras (watch.groups; no polling). Up
to 30 times a second the runner sends the frames that came as one batch, and reads earlier
batches' answers while the detector works. A reader process that dies is restarted by Ray; a
stream that fails retries on its own; neither holds up the other cameras.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facemask.core.errors import FacemaskError
from facemask.core.settings import WatchConfig
from facemask.video.watch.cameras import Camera, check_sources, load_cameras
from facemask.video.watch.compliance import CameraCompliance
from facemask.video.watch.groups import ReaderPool
from facemask.video.watch.production import Production
from facemask.video.watch.summary import WatchResult, camera_totals
from facemask.video.watch.urls import redacted

log = logging.getLogger(__name__)

CYCLE_S = 1 / 30  # the fastest the runner sends batches: frames that arrive meanwhile join the next
STATUS_S = 1.0  # how often reader statuses (and the camera list) are read
# A reader that has not answered its status call for this long is being restarted by Ray, or
# cannot be placed: shown as "unresponsive" (camera_up 0), never waited for.
UNRESPONSIVE_S = 3.0
LATENCY_KEPT = 20_000  # per camera, for the percentiles in summary.json
# At a stop, batches still at the detector are waited for this long at most; their frames are
# then counted lost. `ray job stop` kills the job 3 s after its SIGTERM, so the rows and the
# summary are written first, within a second of the signal.
STOP_BATCH_WAIT_S = 0.5
WAIT_SLICE_S = 0.25  # the longest the loop waits on the detector before looking for a stop
# A reader's counters that only grow: after Ray restarts it (fresh counters) they carry on from
# where the dead one stopped, so no window ever shows a negative count.
READER_COUNTERS = ("dropped", "offered", "decoded", "skipped_by_cap", "skipped_behind", "fell_behind",
                   "reconnects", "failures", "decode_ms", "resize_ms")  # fmt: skip


class CameraExists(FacemaskError):
    """POST /cameras with an id already watched (replacing one is a deliberate PUT)."""


class WatchClosing(FacemaskError):
    """The watch is stopping: nothing new starts."""


@dataclass
class Watched:
    """One camera as the runner holds it: its tracker, counters and last frame for the page."""

    camera: Camera
    compliance: CameraCompliance
    origin: str  # "file" (the YAML) or "api" (added over HTTP)
    status: dict = field(default_factory=dict)
    processed: int = 0
    dropped_reported: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_KEPT))
    tracking_ms: float = 0.0
    last: dict | None = None  # the last processed frame: ref, size, shown detections, time
    jpeg: tuple[int, bytes] | None = None
    marks: dict = field(default_factory=dict)  # the counters when the window began
    raw: dict = field(default_factory=dict)  # the reader's own counters, as it last said them
    base: dict = field(default_factory=dict)  # what earlier lives of the reader (before a restart) counted
    restarts: int = 0  # times Ray started the reader again (its process died)


class Watch:
    """The running watch: cameras come and go (`sync`, `add`, `remove`) while `run` loops."""

    def __init__(self, cfg: WatchConfig, metrics: Any = None) -> None:
        import ray

        from facemask.video.watch.detector import FrameDetector

        self.cfg, self.metrics = cfg, metrics
        self.lock = threading.RLock()
        self.watched: dict[str, Watched] = {}
        # A reader process or the detector that dies is started again by Ray; a reader's calls
        # wait for it (asking for frames again is harmless), a batch in the dead detector is lost.
        self.readers = ReaderPool(cfg.cameras_per_reader, cfg.imgsz, cfg.fast_decode, cfg.reader_cpus)
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
        self.closing = False  # set under the lock at a stop: no camera starts after it
        self.production = Production(cfg, self.model, metrics)  # events and samples, when their sections are there

    # --- cameras coming and going -------------------------------------------------------------

    def add(self, camera: Camera, origin: str, replace: bool = True) -> bool:
        """Start watching `camera`; True if it replaced one of the same id. CameraExists when that
        id is watched and not `replace`; WatchClosing once the watch is stopping."""
        with self.lock:
            if self.closing:
                raise WatchClosing(f"the watch is stopping; camera {camera.id} was not started")
            replaced = camera.id in self.watched
            if replaced and not replace:
                raise CameraExists(
                    f"camera {camera.id!r} is already watched; PUT /cameras/{camera.id} replaces it, or DELETE it first"
                )
            if replaced:
                self.remove(camera.id)
            self.readers.add(camera)
            # The camera's rate is only where the tracker starts: it follows the rate frames are processed at.
            fps = camera.fps or 15.0
            compliance = CameraCompliance(camera.id, self.cfg.window_s, self.keep_windows, fps, self.cfg.conf)
            self.watched[camera.id] = Watched(camera, compliance, origin)
            log.info("camera %s: reading %s", camera.id, redacted(camera.url))
            return replaced

    def remove(self, camera_id: str) -> bool:
        with self.lock:
            watched = self.watched.pop(camera_id, None)
            if watched is None:
                return False
            row = self._close_window(watched, time.time(), partial=True)
            self.readers.remove(camera_id)
        self._write(row)
        self.production.remove(camera_id)
        if self.metrics:
            self.metrics.retire(camera_id)
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
        from facemask.core.errors import FacemaskError

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

        Each reader process has one `next_frames` call waiting in it; those answered bring this
        cycle's frames, and their processes are asked again at once."""
        with self.lock:
            came = [(self.watched[c], meta, ref) for c, meta, ref in self.readers.frames() if c in self.watched]
        step = self.cfg.max_batch
        return [self._send(came[i : i + step]) for i in range(0, len(came), step)]

    def _send(self, batch: list[tuple]) -> dict:
        """One detector call for `batch`: each reader process's object once, and which frame of it is whose."""
        objects: list = []
        where: dict = {}
        picks = []
        for _, _, frame in batch:
            if frame.ref not in where:
                where[frame.ref] = len(objects)
                objects.append(frame.ref)
            picks.append((where[frame.ref], frame.index))
        return {"batch": batch, "result": self.detector.detect.remote(picks, *objects)}

    def finish(self, sent: dict, timeout: float | None = None) -> None:
        """Track the detections of a batch and account for each frame. A batch that fails (the
        detector died, the model raised, a frame was lost) is counted lost, and the watch goes on."""
        import ray

        try:
            answer = ray.get(sent["result"], timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - one batch never ends the watch
            self.lost_batches += 1
            why = "with the detector; Ray restarts it" if isinstance(exc, ray.exceptions.RayActorError) else "to"
            log.warning("a batch of %d frames was lost %s (%s)", len(sent["batch"]), why, _first_line(exc))
            return
        now = time.time()
        with self.lock:  # the page reads the trackers from its own threads
            for (w, meta, frame_ref), found in zip(sent["batch"], answer["detections"]):
                self._account(w, meta, frame_ref, found, now)

    def _account(self, w: Watched, meta: dict, frame_ref, found: list[dict], now: float) -> None:
        t0 = time.perf_counter()
        width, height = meta["width"], meta["height"]
        shown = w.compliance.update(found, w.camera.zone, width, height, at=meta["captured"])
        w.tracking_ms += (time.perf_counter() - t0) * 1000
        latency = now - meta["captured"]
        w.processed += 1
        w.latencies_ms.append(latency * 1000)
        w.last = {"ref": frame_ref, "index": meta["index"], "size": [width, height], "detections": shown}
        w.last["at"], w.last["latency_ms"] = now, round(latency * 1000, 1)
        self.production.frame(w.camera.id, shown, found, meta["captured"], frame_ref)
        if self.metrics:
            self.metrics.processed(w.camera.id, latency)

    # --- every second ---------------------------------------------------------------------------

    def housekeeping(self, now: float) -> None:
        """Re-read the camera list if it changed, refresh the readers' statuses, close due windows.

        Never waits: each reader process has at most one status call out; those answered are read,
        one unanswered for UNRESPONSIVE_S (a process Ray is restarting, or cannot place) marks its
        cameras unresponsive and down."""
        self.reload()
        with self.lock:
            watched = list(self.watched.values())
            answered, waiting = self.readers.statuses(now)
        for w in watched:
            cid = w.camera.id
            if answered.get(cid) is not None:
                self._take_status(w, answered[cid])
            elif cid in answered:  # its process died: Ray is starting it again
                w.status = dict(w.status, state="restarting")
            if cid in waiting and now - waiting[cid] > UNRESPONSIVE_S:
                w.status = dict(w.status, state="unresponsive")
            if self.metrics:
                self.metrics.camera_up(cid, w.status.get("state") == "live")
        with self.lock:
            closed = [self._close_window(w, now) for w in watched if w.compliance.due(now)]
        for row in closed:
            self._write(row)
        if self.metrics:
            self.metrics.refresh(self.production)

    def _take_status(self, w: Watched, raw: dict) -> None:
        """A reader's status, its counters carried on across restarts (a new process starts at 0)."""
        if w.raw and raw.get("pid") != w.raw.get("pid"):
            w.restarts += 1
            for key in READER_COUNTERS:
                w.base[key] = w.base.get(key, 0) + w.raw.get(key, 0)
        w.raw = raw
        w.status = {**raw, **{k: w.base.get(k, 0) + raw.get(k, 0) for k in READER_COUNTERS}, "restarts": w.restarts}
        if self.metrics:
            self.metrics.dropped(w.camera.id, w.status["dropped"] - w.dropped_reported)
        w.dropped_reported = w.status["dropped"]

    def _close_window(self, w: Watched, now: float, partial: bool = False) -> dict:
        counters = {"processed": w.processed, **{k: w.status.get(k, 0) for k in ("dropped", "reconnects", "failures")}}
        # Counters only grow (`_take_status`); max() keeps a row sane should one ever not.
        extra = {k: max(0, v - w.marks.get(k, 0)) for k, v in counters.items()}
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

        w = self.watched.get(camera_id)
        if w is None or w.last is None:
            return None
        last = w.last
        if w.jpeg is None or w.jpeg[0] != last["index"]:
            frame = last["ref"].get(timeout=5)
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
            w.jpeg = (last["index"], data.tobytes())
        return w.jpeg[1]

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> WatchResult:
        """Watch until a stop (Ctrl-C, SIGTERM, `ray job stop`) or `max_seconds`; returns the totals.
        Whatever ends it, even a bug, the last rows and summary.json are written first."""
        from facemask.core.lifecycle import stop_signal

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
            log.warning("stopped by %s; writing the last windows and the summary", stopped)
        except BaseException as exc:
            stopped = f"error: {type(exc).__name__}"
            log.error("the watch failed (%s); writing the last windows and the summary", _first_line(exc))
            raise
        finally:
            result = self.close(in_flight, stopped)
        return result

    def collect(self, in_flight: list[dict], cycle_ends: float) -> None:
        """Finish the batches whose answers came, until the cycle ends; with two batches queued at
        the detector already, wait for the oldest (the detector is the bottleneck: ask no faster)."""
        import ray

        while in_flight:
            rest = cycle_ends - time.perf_counter()
            must_wait = len(in_flight) > 2
            # Waited for in slices, so a stop is seen even while the detector hangs.
            ready, _ = ray.wait([in_flight[0]["result"]], timeout=WAIT_SLICE_S if must_wait else max(0.0, rest))
            if not ready:
                if must_wait and not self.stopping.is_set():
                    continue
                break
            self.finish(in_flight.pop(0))
        rest = cycle_ends - time.perf_counter()
        if rest > 0:
            self.stopping.wait(rest)

    def close(self, in_flight: list[dict], stopped: str | None = None) -> WatchResult:
        """The stop, in the order that loses least if it is cut short (`ray job stop` kills 3 s
        after its signal): no camera starts from now on; the batches at the detector are read
        for STOP_BATCH_WAIT_S at most (the rest are counted lost); every camera's partial window
        and summary.json are written; only then are the readers and the detector ended."""
        import ray

        with self.lock:
            self.closing = True
            watched = list(self.watched.values())
        wait_until = time.monotonic() + STOP_BATCH_WAIT_S
        for sent in in_flight:
            try:
                self.finish(sent, timeout=max(0.0, wait_until - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - a stop's own doing (Ray going down): frames lost, not rows
                log.warning("a batch was lost in the stop: %s", _first_line(exc))
        in_flight.clear()
        now = time.time()
        with self.lock:
            rows = [self._close_window(w, now, partial=True) for w in watched]
            for w in watched:
                w.status = dict(w.status, state="stopped")
        for row in rows:
            self._write(row)
        self.production.close()  # open events end; the outbox keeps what is not yet delivered
        result = self.result(stopped)
        self.readers.close()
        for w in watched:
            if self.metrics:
                self.metrics.retire(w.camera.id)
        ray.kill(self.detector)
        return result

    def result(self, stopped: str | None) -> WatchResult:
        seconds = time.time() - self.started
        cameras = {w.camera.id: camera_totals(w, seconds) for w in self.watched.values()}
        summary = self.cfg.out / "summary.json"
        extra = self.production.summary()
        result = WatchResult(
            seconds, cameras, self.windows, self.log_path, summary, stopped, self.lost_batches, **extra
        )
        # Written whole or not at all: a kill mid-write leaves the previous file, never half of one.
        partial = summary.with_suffix(".json.tmp")
        partial.write_text(json.dumps(result.to_dict() | {"model": self.model}, indent=2))
        partial.replace(summary)
        return result


def _first_line(exc: BaseException) -> str:
    """An exception as one line: Ray's task errors carry the remote traceback."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]
