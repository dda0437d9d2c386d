"""The watch's own HTTP server: the camera grid page and the control API.

    GET    /                       the page (facemask/serving/web/cameras.html)
    GET    /cameras                every camera: state, counters, last boxes, compliance windows
    GET    /cameras/ID/frame.jpg   the camera's last processed frame (made on request, once per frame)
    POST   /cameras                add a camera: {"id", "url", "fps", "zone"}; 409 if the id is taken
    PUT    /cameras/ID             add or replace camera ID (a deliberate repoint)
    DELETE /cameras/ID             stop watching it
    GET    /healthz                {"ok": true, "cameras": N}
    GET    /review                 the events' review page (facemask/serving/web/review.html)
    GET    /events                 violation events, newest first: ?camera=&state=&since=&until=&acked=0|1&limit=
    GET    /events/wait?after=N    held until the review changes past N (or timeout_s, at most 30 s): {"seq": M}
    GET    /events/KEY/snapshot.jpg  an event's snapshot (faces blurred as the camera's `blur` says)
    POST   /events/KEY/ack         acknowledge an event: {"by": "name", "note": "..."}

Who may do what (docs/cameras.md):
- With FACEMASK_API_KEY set (16 characters or more, not a placeholder), everything but the page
  and /healthz needs `Authorization: Bearer KEY`.
- Without a key, the server reads out (GET) only on a loopback address, and changes nothing
  unless it was started with --open-api-on-loopback (which needs a loopback address).
- Whatever the key, a request from a web page of another origin (an `Origin` header that is not
  this server's) is refused, and a change must be sent as `application/json` (a form or
  text/plain body is what a cross-site page can send without asking). Without a key, on
  loopback, so is a `Host` that is not a loopback name (DNS rebinding).
- Cameras added over the API are held to --api-sources and --api-hosts (`watch.urls`).

Every connection has a timeout (an idle keep-alive socket, or a body declared and never sent,
holds a thread for at most `timeout_s`), and an answer given before the body was read closes
the connection, so the unread body is never taken for the next request.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from facemask.core.errors import FacemaskError
from facemask.core.settings import LOOPBACK_HOSTS
from facemask.serving.pages import web_page
from facemask.serving.request_checks import key_matches
from facemask.video.watch.cameras import check_sources, parse_camera
from facemask.video.watch.runner import CameraExists, WatchClosing
from facemask.video.watch.urls import API_SOURCES, check_api_source, redacted

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024
TIMEOUT_S = 10.0
# GET /events/wait: the longest a reader is held, and how many are held at once (a thread each).
WAIT_MAX_S, MAX_WAITERS = 30.0, 16


WAITERS = threading.BoundedSemaphore(MAX_WAITERS)


@dataclass(frozen=True)
class Access:
    """Who the control API answers: the key (None: none set), whether changes are open on
    loopback without one, and the allowlist of what a camera added over it may be."""

    api_key: str | None = None
    open_on_loopback: bool = False
    sources: tuple[str, ...] = API_SOURCES
    hosts: tuple = ()


class WatchPage:
    """Serves `watch` (a `runner.Watch`) on host:port from a thread; `close()` stops it."""

    def __init__(self, watch: Any, host: str, port: int, access: Access, timeout_s: float = TIMEOUT_S) -> None:
        loopback = host in LOOPBACK_HOSTS
        if access.open_on_loopback and not loopback:
            raise FacemaskError(
                f"--open-api-on-loopback with --host {host}: the API is opened without a key only on a loopback "
                "address; set FACEMASK_API_KEY to serve it on other addresses"
            )
        attrs = {"watch": watch, "access": access, "loopback": loopback, "timeout": timeout_s}
        handler = type("Handler", (Handler,), attrs)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="watch-page", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Handler(BaseHTTPRequestHandler):
    watch: Any
    access: Access
    loopback: bool
    timeout: float  # seconds a socket may stay silent: StreamRequestHandler sets it on the connection
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("page: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            return self.send(200, web_page("cameras.html").encode(), "text/html; charset=utf-8")
        if path == "/review":
            return self.send(200, web_page("review.html").encode(), "text/html; charset=utf-8")
        if path == "/healthz":
            return self.json(200, {"ok": True, "cameras": len(self.watch.watched)})
        if not self.authorized():
            return None
        if path == "/cameras":
            return self.json(200, self.watch.state())
        parts = path.strip("/").split("/")
        if parts[0] == "events":
            try:
                return self.events(parts)
            except sqlite3.ProgrammingError:  # the outbox closed under a late request: the watch is stopping
                return self.error(503, "stopping", "the watch is stopping; its events are in OUT/events.jsonl")
        if len(parts) == 3 and parts[0] == "cameras" and parts[2] == "frame.jpg":
            jpeg = self.watch.frame_jpeg(parts[1])
            if jpeg is None:
                return self.error(404, "no_frame", f"camera {parts[1]!r} has no processed frame yet, or is not watched")
            return self.send(200, jpeg, "image/jpeg")
        return self.error(404, "not_found", f"no route {path}; see GET /cameras")

    def events(self, parts: list[str]) -> None:
        """GET /events (filtered), GET /events/KEY/snapshot.jpg and /clip.webm; 404 when events are off."""
        hub = self.watch.production.events
        if hub is None:
            return self.error(404, "events_off", "events are off: add an `events:` section to the camera list")
        if len(parts) == 1:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            one = {k: v[-1] for k, v in query.items()}
            try:
                found = hub.outbox.events(
                    camera=one.get("camera") or None,
                    state=one.get("state") or None,
                    since=float(one["since"]) if one.get("since") else None,
                    until=float(one["until"]) if one.get("until") else None,
                    acked={"1": True, "0": False}.get(one.get("acked", "")),
                    limit=max(1, min(1000, int(one.get("limit", 200)))),
                )
            except ValueError:
                return self.error(400, "bad_query", "since and until are Unix times in seconds, limit a number")
            if hub.clips is not None:  # a clip is written after_s past its alert: named once it is there
                found = [{**e, "clip": hub.clip(e["camera"], e["event"])} for e in found]
            return self.json(200, {"events": found})
        if parts == ["events", "wait"]:
            return self.wait_for_changes(hub)
        if len(parts) == 3 and parts[2] == "snapshot.jpg":
            event = hub.outbox.event(parts[1])
            file = hub.out / event["snapshot"] if event and event.get("snapshot") else None
            if file is None or not file.is_file():
                return self.error(404, "no_snapshot", f"event {parts[1][:80]!r} has no snapshot (unknown or pruned)")
            return self.send(200, file.read_bytes(), "image/jpeg")
        if len(parts) == 3 and parts[2] == "clip.webm":
            event = hub.outbox.event(parts[1])
            clip = hub.clip(event["camera"], event["event"]) if event else None
            if clip is None:
                return self.error(
                    404, "no_clip", f"event {parts[1][:80]!r} has no clip (clips off, not yet written, or pruned)"
                )
            return self.send(200, (hub.out / clip).read_bytes(), "video/webm")
        return self.error(404, "not_found", "see GET /events")

    def wait_for_changes(self, hub) -> None:
        """GET /events/wait?after=N&timeout_s=S: answers {"seq": M} as soon as the review changes
        past N (an event starts or ends, one is acknowledged), or after S seconds (at most
        WAIT_MAX_S) with the count as it is. The review page waits here instead of polling; at most
        MAX_WAITERS requests wait at once, more get 503 and poll."""
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).items()}
        try:
            after, timeout_s = int(query.get("after", 0)), min(WAIT_MAX_S, max(0.0, float(query.get("timeout_s", 25))))
        except ValueError:
            return self.error(400, "bad_query", "after is the last seq seen (a number), timeout_s seconds")
        if not WAITERS.acquire(blocking=False):
            return self.error(503, "busy", f"{MAX_WAITERS} readers wait already; poll GET /events instead")
        try:
            return self.json(200, {"seq": hub.changes.wait(after, timeout_s)})
        finally:
            WAITERS.release()

    def acknowledge(self, event: str) -> None:
        if not self.authorized(change=True):
            return None
        if self.watch.production.events is None:
            return self.error(404, "events_off", "events are off: add an `events:` section to the camera list")
        if self.headers.get_content_type() != "application/json":
            return self.error(
                415, "unsupported_media_type", 'send {"by": "name"} as JSON, Content-Type: application/json'
            )
        body = self.body()
        if body is None:
            return None
        try:
            entry = json.loads(body)
            by, note = str(entry["by"])[:80], entry.get("note")
        except (ValueError, KeyError, TypeError):
            return self.error(400, "bad_ack", 'send {"by": "who acknowledges", "note": "optional"}')
        if not self.watch.production.events.outbox.acknowledge(event, by, None if note is None else str(note)[:500]):
            return self.error(404, "unknown_event", f"no event {event[:80]!r}")
        self.watch.production.events.changes.bump()
        return self.json(200, {"acknowledged": event, "by": by})

    def do_POST(self) -> None:  # noqa: N802
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) == 3 and parts[0] == "events" and parts[2] == "ack":
            return self.acknowledge(parts[1])
        if self.path.split("?", 1)[0] != "/cameras":
            return self.error(404, "not_found", "cameras are added with POST /cameras")
        self.change(None)

    def do_PUT(self) -> None:  # noqa: N802
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 2 or parts[0] != "cameras":
            return self.error(404, "not_found", "a camera is replaced with PUT /cameras/ID")
        self.change(parts[1])

    def change(self, camera_id: str | None) -> None:
        """POST (camera_id None: a new camera, 409 if its id is taken) or PUT (add or replace camera_id)."""
        if not self.authorized(change=True):
            return None
        if self.headers.get_content_type() != "application/json":
            return self.error(415, "unsupported_media_type", "send the camera as JSON, Content-Type: application/json")
        body = self.body()
        if body is None:
            return None
        where = "PUT /cameras/" + camera_id if camera_id else "POST /cameras"
        try:
            entry = json.loads(body)
            if camera_id is not None and isinstance(entry, dict):
                if entry.setdefault("id", camera_id) != camera_id:
                    raise FacemaskError(f"{where}: the body's id {entry['id']!r} is not the URL's {camera_id!r}")
            camera = parse_camera(entry, where)
            check_api_source(camera.url, self.access.sources, self.access.hosts)
            camera = check_sources([camera], Path.cwd())[0]
        except (ValueError, FacemaskError) as exc:
            return self.error(400, "bad_camera", str(exc))
        try:
            replaced = self.watch.add(camera, "api", replace=camera_id is not None)
        except CameraExists as exc:
            return self.error(409, "camera_exists", str(exc))
        except WatchClosing as exc:
            return self.error(503, "stopping", str(exc))
        shown = {**camera.to_dict(), "url": redacted(camera.url)}  # the answer may be logged on its way back
        if camera_id is None:
            return self.json(201, {"added": camera.id, "camera": shown})
        return self.json(200 if replaced else 201, {"replaced" if replaced else "added": camera.id, "camera": shown})

    def do_DELETE(self) -> None:  # noqa: N802
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 2 or parts[0] != "cameras":
            return self.error(404, "not_found", "cameras are removed with DELETE /cameras/ID")
        if not self.authorized(change=True):
            return None
        if not self.watch.remove(parts[1]):
            return self.error(404, "unknown_camera", f"camera {parts[1]!r} is not watched")
        return self.json(200, {"removed": parts[1]})

    def body(self) -> bytes | None:
        """The request's body, at most MAX_BODY bytes; None (and the answer sent) when it is not one."""
        declared = self.headers.get("Content-Length")
        try:
            length = int(declared) if declared is not None else 0
        except ValueError:
            self.error(400, "bad_length", f"Content-Length {declared[:20]!r} is not a number of bytes")
            return None
        if length <= 0 or length > MAX_BODY:
            self.error(400, "bad_body", f"send one camera as JSON, at most {MAX_BODY} bytes")
            return None
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True  # nothing can be answered mid-body: the socket is closed
            return None
        if len(data) < length:
            self.close_connection = True
            return None
        self.body_read = True
        return data

    def authorized(self, change: bool = False) -> bool:
        """The origin, host and key checks of every API call (module docstring); sends the refusal."""
        origin = self.headers.get("Origin")
        host = self.headers.get("Host", "")
        if origin is not None and origin.rstrip("/").split("://", 1)[-1] != host:
            self.error(403, "cross_origin", f"requests from the page of {origin[:80]!r} are refused")
            return False
        key = self.access.api_key
        # Without a key, the loopback address is the only protection: a page whose name was
        # rebound to 127.0.0.1 sends its own name as Host. (With a key, a reverse proxy may send any.)
        if not key and self.loopback and not _loopback_host(host):
            self.error(403, "bad_host", f"Host {host[:80]!r} is not a loopback name; use http://127.0.0.1:PORT/")
            return False
        if key:
            if key_matches(key, self.headers.get("Authorization", "").removeprefix("Bearer ").strip()):
                return True
            self.error(401, "unauthorized", "send Authorization: Bearer <FACEMASK_API_KEY>")
            return False
        if not self.loopback:
            self.error(401, "unauthorized", "set FACEMASK_API_KEY to serve the cameras on a non-loopback address")
            return False
        if change and not self.access.open_on_loopback:
            self.error(
                403,
                "forbidden",
                "cameras are added or removed with FACEMASK_API_KEY set, or with the watch started "
                "with --open-api-on-loopback",
            )
            return False
        return True

    def json(self, status: int, body: dict) -> None:
        self.send(status, json.dumps(body).encode(), "application/json")

    def error(self, status: int, error: str, message: str) -> None:
        self.json(status, {"error": error, "message": message})

    def send(self, status: int, body: bytes, content_type: str) -> None:
        # A body the request declared and we did not read would be taken for the next request.
        unread = self.command in ("POST", "PUT", "DELETE") and not getattr(self, "body_read", False)
        unread = unread and (self.headers.get("Content-Length") not in (None, "0") or "chunked" in
                             self.headers.get("Transfer-Encoding", "").lower())  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if unread:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        self.body_read = False  # the next request on this connection starts afresh


def _loopback_host(host: str) -> bool:
    """Whether a Host header names this machine by a loopback name (with or without a port)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    return name.strip("[]").lower() in LOOPBACK_HOSTS
