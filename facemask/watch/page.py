"""The watch's own HTTP server: the camera grid page and the control API.

    GET    /                       the page (facemask/web/cameras.html)
    GET    /cameras                every camera: state, counters, last boxes, compliance windows
    GET    /cameras/ID/frame.jpg   the camera's last processed frame (made on request, once per frame)
    POST   /cameras                add a camera: {"id": ..., "url": ..., "fps": ..., "zone": ...}
    DELETE /cameras/ID             stop watching it
    GET    /healthz                {"ok": true, "cameras": N}

With FACEMASK_API_KEY set, everything but the page and /healthz needs `Authorization: Bearer KEY`.
Without one, cameras can be added or removed only when the server listens on loopback.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from facemask.drawing import web_page
from facemask.errors import FacemaskError
from facemask.request_checks import key_matches
from facemask.watch.cameras import check_sources, parse_camera

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class WatchPage:
    """Serves `watch` (a `runner.Watch`) on host:port from a thread; `close()` stops it."""

    def __init__(self, watch: Any, host: str, port: int, api_key: str | None) -> None:
        handler = type("Handler", (Handler,), {"watch": watch, "api_key": api_key, "loopback": host in LOOPBACK})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="watch-page", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Handler(BaseHTTPRequestHandler):
    watch: Any
    api_key: str | None
    loopback: bool
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("page: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            return self.send(200, web_page("cameras.html").encode(), "text/html; charset=utf-8")
        if path == "/healthz":
            return self.json(200, {"ok": True, "cameras": len(self.watch.watched)})
        if not self.authorized():
            return None
        if path == "/cameras":
            return self.json(200, self.watch.state())
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "cameras" and parts[2] == "frame.jpg":
            jpeg = self.watch.frame_jpeg(parts[1])
            if jpeg is None:
                return self.error(404, "no_frame", f"camera {parts[1]!r} has no processed frame yet, or is not watched")
            return self.send(200, jpeg, "image/jpeg")
        return self.error(404, "not_found", f"no route {path}; see GET /cameras")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/cameras":
            return self.error(404, "not_found", "cameras are added with POST /cameras")
        if not self.authorized(change=True):
            return None
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            return self.error(400, "bad_body", f"send one camera as JSON, at most {MAX_BODY} bytes")
        try:
            entry = json.loads(self.rfile.read(length))
            camera = check_sources([parse_camera(entry, "POST /cameras")], Path.cwd())[0]
        except (ValueError, FacemaskError) as exc:
            return self.error(400, "bad_camera", str(exc))
        self.watch.add(camera, "api")
        return self.json(201, {"added": camera.id, "camera": camera.to_dict()})

    def do_DELETE(self) -> None:  # noqa: N802
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 2 or parts[0] != "cameras":
            return self.error(404, "not_found", "cameras are removed with DELETE /cameras/ID")
        if not self.authorized(change=True):
            return None
        if not self.watch.remove(parts[1]):
            return self.error(404, "unknown_camera", f"camera {parts[1]!r} is not watched")
        return self.json(200, {"removed": parts[1]})

    def authorized(self, change: bool = False) -> bool:
        if self.api_key:
            if key_matches(self.api_key, self.headers.get("Authorization", "").removeprefix("Bearer ").strip()):
                return True
            self.error(401, "unauthorized", "send Authorization: Bearer <FACEMASK_API_KEY>")
            return False
        if change and not self.loopback:
            self.error(403, "forbidden", "set FACEMASK_API_KEY to add or remove cameras on a non-loopback address")
            return False
        return True

    def json(self, status: int, body: dict) -> None:
        self.send(status, json.dumps(body).encode(), "application/json")

    def error(self, status: int, error: str, message: str) -> None:
        self.json(status, {"error": error, "message": message})

    def send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)
