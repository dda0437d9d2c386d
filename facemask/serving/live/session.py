"""The endpoint's `/live` WebSocket: one `LiveSession` per stream, all of a replica's run by its `LiveStreams`.

Binary messages are frames (JPEG/PNG/WebP), text messages are JSON settings. The first
message is `{"key": ..., "conf": ..., "imgsz": ..., "model": ..., "fps": ...}` (the key may
instead come as an Authorization header). Each processed frame gets a `result` with tracked
detections and the compliance summary; a bad frame or setting gets an `error` naming it and
the stream stays up. Settings sent later are acknowledged with a `settings` message: the
settings in force, the stream's counts, and `next_frame_in_s`, when its fps budget takes a
frame again. Frames are never queued: one arriving while the model is busy replaces
the one waiting, and counts as dropped. Frames go through the server's own checks and batch
(`serving.inference`), the same as /predict.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import time
import weakref
from dataclasses import dataclass, field

from fastapi import WebSocket, WebSocketDisconnect

from facemask.core.classes import class_counts
from facemask.core.operating_point import lowest, shown_thresholds
from facemask.core.settings import INFERENCE
from facemask.serving.api_schema import APIError
from facemask.serving.live.settings import LIVE_DEFAULTS, LIVE_IMGSZ, live_settings
from facemask.serving.live.tracker import TRACK_CONF, LatestFrame, PeopleTracker
from facemask.serving.request_checks import key_matches

log = logging.getLogger("facemask.serving")

# A live stream must say who it is (its first message) within this many seconds. A browser
# sends it as the socket opens; one that waits longer holds one of the replica's slots
# (max_ongoing_requests) that a real stream is queued behind.
HELLO_TIMEOUT_S = 5.0
# Sockets a replica keeps waiting for their first message; one more closes the longest waiting.
# Idle sockets then cannot hold the replica's slots (docs/reliability.md measured 200 of them
# delaying a real stream by 11 s, one that is ready within a second now).
MAX_WAITING_HELLOS = 8
# An idle open stream's gauges are set again this often (serving.metrics: Ray drops a gauge not
# set for two report periods, about 20 s).
GAUGE_REFRESH_S = 5.0
# /live/streams asks for a garbage collection (off the event loop) at most this often.
STATS_GC_S = 2.0
# WebSocket close codes: the 4000 range is the application's own.
CLOSE_UNAUTHORIZED, CLOSE_BAD_HELLO = 4401, 4400


@dataclass
class LiveSession:
    """One stream: its settings, the newest frame waiting, its tracker and its counts."""

    settings: dict
    tracker: PeopleTracker
    slot: LatestFrame = field(default_factory=LatestFrame)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    open: bool = True
    stream_id: int = 0
    processed: int = 0
    rate_limited: int = 0

    @property
    def received(self) -> int:
        return self.slot.received + self.rate_limited

    def counts(self) -> dict:
        return {
            "received": self.received,
            "dropped": self.slot.dropped,
            "rate_limited": self.rate_limited,
            "processed": self.processed,
        }


class LiveStreams:
    """A replica's live streams. `server` is the FacemaskServer: its key, limits, models and batch."""

    def __init__(self, server) -> None:
        self.server = server
        self.open: dict[int, LiveSession] = {}  # by stream id
        self.trackers: weakref.WeakSet = weakref.WeakSet()  # every live tracker still in memory
        self.ids = itertools.count(1)
        # Sockets waiting for their first message, oldest first: each one's event closes it early.
        self.waiting: dict[int, asyncio.Event] = {}
        self.tickets = itertools.count(1)
        self.evicted = 0  # sockets closed to make room for newer ones
        self.collected_at, self.closed_since_gc = -STATS_GC_S, False

    async def stats(self) -> dict:
        """Open streams, and trackers still in memory. A closed stream's tracker held in a
        reference cycle is freed by a collection, which runs here off the event loop, only when
        a stream closed since the last one and at most every STATS_GC_S: callers cannot make the
        replica collect garbage in a loop."""
        now = time.monotonic()
        if self.closed_since_gc and now - self.collected_at >= STATS_GC_S:
            import gc

            self.collected_at, self.closed_since_gc = now, False
            await asyncio.to_thread(gc.collect)
        return {
            "open": len(self.open),
            "trackers": len(self.trackers),
            "dropped": sum(s.slot.dropped for s in self.open.values()),
            "waiting_hello": len(self.waiting),
            "evicted": self.evicted,
        }

    async def serve(self, ws: WebSocket) -> None:
        """Run one WebSocket stream until either side closes it."""
        await ws.accept()
        try:
            settings = await self.hello(ws)
        except WebSocketDisconnect:
            return
        if settings is None:
            return
        stream_id = next(self.ids)
        session = LiveSession(settings, PeopleTracker(frame_rate=settings["fps"]), stream_id=stream_id)
        self.open[stream_id] = session
        self.trackers.add(session.tracker)
        receiver = asyncio.get_running_loop().create_task(self.receive(ws, session))
        try:
            while session.open:
                try:
                    await asyncio.wait_for(session.wake.wait(), GAUGE_REFRESH_S)
                except asyncio.TimeoutError:
                    # An open stream with no frames keeps its gauges (Ray drops one not set for ~20 s).
                    if session.processed:
                        self.server.inference.record_live(stream_id, session.tracker.summary())
                    continue
                session.wake.clear()
                item = session.slot.take()
                if item is not None:
                    await ws.send_text(json.dumps(await self.frame(item, session), separators=(",", ":")))
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away mid-send
        finally:
            receiver.cancel()
            self.open.pop(stream_id, None)  # the stream's tracker goes with it
            self.closed_since_gc = True
            self.server.inference.retire_live(stream_id)  # its gauges go with it

    async def hello(self, ws: WebSocket) -> dict | None:
        """The stream's first message: key and settings. None (and the socket closed) if refused."""
        try:
            message = await self.first_message(ws)
            if message is None:
                await self.refuse(
                    ws,
                    CLOSE_BAD_HELLO,
                    "hello_timeout",
                    f"send the settings as a JSON text message as the socket opens (within {HELLO_TIMEOUT_S:g} s)",
                )
                return None
            hello = json.loads(message)
        except (ValueError, KeyError):
            await self.refuse(
                ws,
                CLOSE_BAD_HELLO,
                "bad_hello",
                'the first message must be JSON text: {"key": ..., "conf": ..., "imgsz": ...}',
            )
            return None
        header = ws.headers.get("authorization", "")
        given = (
            hello.get("key")
            if isinstance(hello, dict) and hello.get("key")
            else (header[7:] if header.lower().startswith("bearer ") else None)
        )
        if given is not None and not isinstance(given, str):
            given = ""  # a number or a list is no key: refused as one, not a crash
        if not key_matches(self.server.api_key, given):
            await self.refuse(
                ws, CLOSE_UNAUTHORIZED, "unauthorized", 'send the API key in the first message: {"key": "<key>"}'
            )
            return None
        try:
            settings = live_settings(hello, LIVE_DEFAULTS)
            detector = await self.server.model_for_id(settings["model"])
        except APIError as exc:
            await self.refuse(ws, CLOSE_BAD_HELLO, exc.error, exc.message)
            return None
        await ws.send_text(
            json.dumps({"type": "ready", "settings": settings, "model": self.server.inference.describe(detector)})
        )
        return settings

    async def first_message(self, ws: WebSocket) -> str | None:
        """The socket's first text message; None when it took over HELLO_TIMEOUT_S, or when
        MAX_WAITING_HELLOS newer sockets were waiting too and this one waited longest."""
        ticket, evict = next(self.tickets), asyncio.Event()
        self.waiting[ticket] = evict
        if len(self.waiting) > MAX_WAITING_HELLOS:
            oldest = next(iter(self.waiting))
            self.waiting.pop(oldest).set()
            self.evicted += 1
        receiving = asyncio.ensure_future(ws.receive_text())
        evicted = asyncio.ensure_future(evict.wait())
        try:
            done, _ = await asyncio.wait({receiving, evicted}, timeout=HELLO_TIMEOUT_S, return_when="FIRST_COMPLETED")
            return receiving.result() if receiving in done else None
        finally:
            self.waiting.pop(ticket, None)
            for task in (receiving, evicted):
                task.cancel()

    async def refuse(self, ws: WebSocket, code: int, error: str, message: str) -> None:
        await self.error(ws, None, error, message)
        await ws.close(code=code, reason=error)

    async def error(self, ws: WebSocket, frame: int | None, error: str, message: str) -> None:
        await ws.send_text(json.dumps({"type": "error", "frame": frame, "error": error, "message": message}))

    async def receive(self, ws: WebSocket, session: LiveSession) -> None:
        """Read the socket as fast as it sends: frames into the one slot, settings applied at once.

        A token bucket holds the stream to its `fps` on average (bursts of up to one second's
        worth pass); frames over it are not even kept, and counted as rate_limited.
        """
        # Full from the start: a client's first two frames go out together, and a bucket that
        # began at one token refused the second with an error on every new stream.
        tokens, refilled, notified = float(session.settings["fps"]), time.perf_counter(), 0.0
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is not None:
                    try:
                        session.settings = live_settings(json.loads(message["text"]), session.settings)
                    except ValueError:
                        await self.error(ws, None, "invalid_parameter", "a text message must be JSON settings")
                        continue
                    except APIError as exc:
                        await self.error(ws, None, exc.error, exc.message)
                        continue
                    # Read in order after every frame sent before it, so its counts are exact and
                    # a client paced by `next_frame_in_s` is never refused.
                    fps = session.settings["fps"]
                    due = min(fps, tokens + (time.perf_counter() - refilled) * fps)
                    ack = {"settings": session.settings, "stream": session.counts()}
                    ack["next_frame_in_s"] = math.ceil(max(0.0, 1 - due) / fps * 1000) / 1000
                    await ws.send_text(json.dumps({"type": "settings", **ack}))
                    continue
                now, fps = time.perf_counter(), session.settings["fps"]
                tokens, refilled = min(fps, tokens + (now - refilled) * fps), now
                index = session.received
                if tokens < 1:
                    session.rate_limited += 1  # faster than the stream's fps: not even kept
                    if now - notified > 5:
                        notified = now
                        await self.error(
                            ws,
                            index,
                            "rate_limited",
                            f"frames arrive faster than fps={fps:g}; the extra ones are dropped",
                        )
                    continue
                tokens -= 1
                session.slot.put((index, message.get("bytes") or b"", now))
                session.wake.set()
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            session.open = False
            session.wake.set()

    def production(self, session: LiveSession, detector, image, scale: float, answer: dict, found: list, shown) -> None:
        """A tracked frame to the endpoint's drift and sampling (source `live`): its people, each
        known across streams by stream and track, and the weak faces under the shown threshold."""
        try:
            people = [
                dict(d, track_id=None if d["track_id"] is None else f"{session.stream_id}:{d['track_id']}")
                for d in answer["detections"]
            ]
            threshold = (lambda d: shown) if isinstance(shown, (int, float)) else (lambda d: shown[d["class_id"]])
            weak = [d for d in found if d["confidence"] < threshold(d)]
        except (KeyError, IndexError, TypeError) as exc:  # never the frame's answer, whatever a detection lacks
            log.warning("live stream %d: a frame was not given to drift or sampling: %r", session.stream_id, exc)
            return
        self.server.production("live", detector, image, scale, {**answer, "detections": people}, weak)

    async def frame(self, item: tuple, session: LiveSession) -> dict:
        """One frame through the same checks and batch as /predict, then the stream's tracker."""
        index, data, received = item
        server, settings, stream = self.server, session.settings, session.counts()
        try:
            server.inference.check_frame(data)
            async with server.inference.admitted("the server is busy; this frame was skipped"):
                detector = await server.model_for_id(settings["model"])
                # The tracker also wants the weak detections (see tracker.TRACK_CONF); the answer shows conf and up.
                shown = shown_thresholds(settings["conf"], detector.point, INFERENCE.conf)
                imgsz = settings["imgsz"] or (detector.point.imgsz if detector.point else LIVE_IMGSZ)
                params = (min(lowest(shown), TRACK_CONF), settings["iou"], imgsz, settings["max_det"])
                image, scale, answer = await server.inference.detect(detector, data, params, received)
        except APIError as exc:
            return {"type": "error", "frame": index, "error": exc.error, "message": exc.message, "stream": stream}
        except Exception as exc:  # noqa: BLE001 - a failed model call costs this frame, not the stream
            log.warning("live stream %d: frame %d failed: %s: %s", session.stream_id, index, type(exc).__name__, exc)
            message = f"the model failed on this frame ({type(exc).__name__}); the stream stays open"
            return {"type": "error", "frame": index, "error": "model_error", "message": message, "stream": stream}
        tracked_at = time.perf_counter()
        found = answer["detections"]
        answer["detections"] = session.tracker.update(found, show_conf=shown)
        answer["counts"] = class_counts(answer["detections"])
        session.processed += 1
        answer["timings"]["track_ms"] = round((time.perf_counter() - tracked_at) * 1000, 2)
        answer["timings"]["total_ms"] = round((time.perf_counter() - received) * 1000, 2)
        self.production(session, detector, image, scale, answer, found, shown)
        stream["processed"] = session.processed
        people = session.tracker.summary()
        server.inference.record_live(session.stream_id, people)
        return {"type": "result", "frame": index, **answer, "people": people, "stream": stream}
