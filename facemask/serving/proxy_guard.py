"""Ray Serve's HTTP proxy, hardened against replica faults and slow clients.

Serve loads this into every proxy it starts when the node's environment has
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=facemask.serving.proxy_guard.middlewares` (runtime.PROXY_ENV:
`facemask serve` sets it for the cluster it starts, cluster.yaml for `ray start`).

What Ray's proxy does alone, and what the guard changes:
- A replica dies holding requests: the proxy answers each a plain-text 500. The guard keeps
  every body it forwards, so such a request is sent once more and lands on a live replica; if
  that fails too, the client gets a JSON 503 with Retry-After. Only a request that got no
  answer at all, whose client is still there, is sent again. Every facemask route is safe to
  resend (inference has no side effects); on a Serve instance shared with apps whose requests
  are not, set FACEMASK_PROXY_RETRIES=0.
- No replica is running (a lone replica restarting, an app still deploying): requests wait in
  Ray's router until `request_timeout_s`. The guard watches which replicas are running and
  alive, and answers a JSON 503 with Retry-After once a request has waited `ready_wait_s`.
- A body that trickles in holds a replica slot while the replica reads it. The guard reads
  the whole body first, at most `body_timeout_s`, else 408; replicas only see whole requests,
  and at most `max_reading` requests at once may still be sending their body.
- Errors the proxy writes itself (404 outside every app, 408, 503) are plain text; the guard
  gives them the API's `{"error", "message"}` shape.
- The proxy's HTTP server (uvicorn) reads headers of any size for as long as a client takes,
  and keeps any number of connections. Serve offers no setting for these, so the callback
  gives that server a protocol with bounds (`bounded_protocol`): headers over
  `max_header_kb` get 431, headers not complete after `header_timeout_s` get 408, and
  connections beyond `max_connections` get 503; each closes the connection.

Settings come from the proxy's environment: FACEMASK_PROXY_<FIELD> for each GuardSettings field.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, fields

log = logging.getLogger("ray.serve")

ENV_PREFIX = "FACEMASK_PROXY_"
# Error names for the statuses the proxy writes itself.
PROXY_ERRORS = {404: "not_found", 408: "timeout", 429: "overloaded", 500: "internal", 503: "unavailable"}


@dataclass(frozen=True)
class GuardSettings:
    body_timeout_s: float = 30.0  # a body not all arrived by then gets 408
    max_body_mb: float = 16.0  # bodies up to this are kept for a second try; larger ones pass straight through
    max_reading: int = 256  # requests still sending their body at once; more get 503
    ready_wait_s: float = 2.0  # how long a request waits for a running replica before its 503
    retries: int = 1  # how many times a request its replica died holding is sent again
    poll_s: float = 0.5  # how often the running replicas are read
    max_header_kb: int = 64  # a request line and headers larger than this get 431
    header_timeout_s: float = 10.0  # headers not all arrived by then get 408 (a slow-header client)
    max_connections: int = 1024  # open connections; more are answered 503 and closed

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "GuardSettings":
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            name = ENV_PREFIX + field.name.upper()
            if name not in environ:
                continue
            kind = type(field.default)
            try:
                value = kind(environ[name])
            except ValueError:
                raise ValueError(
                    f"{name}={environ[name]!r} is not {'an integer' if kind is int else 'a number'}; "
                    f"set one like {field.default} or unset it"
                ) from None
            if value < 0 or (value == 0 and field.name not in ("retries",)):
                raise ValueError(f"{name}={environ[name]!r} must be above 0; set a number like {field.default}")
            values[field.name] = value
        return cls(**values)


class ReplicaWatch:
    """Which applications have a running replica: those the controller lists RUNNING whose actor is still alive.

    The controller notices a dead replica at its next health check (seconds later); Ray frees
    a dead replica's actor name at once, so the two together are both quick and current.
    """

    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s
        self.prefixes: list[tuple[str, str]] = []  # (route prefix, app), longest first
        self.unready_since: dict[str, float] = {}  # app -> when it was last seen with no running replica
        self.updated_at = float("-inf")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def app_for(self, path: str) -> str | None:
        if path.startswith("/-/"):  # the proxy's own routes
            return None
        for prefix, app in self.prefixes:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return app
        return None

    def waiting_since(self, app: str, now: float) -> float | None:
        """Since when `app` has had no running replica; None when it has one, or when the watch is out of date."""
        if now - self.updated_at > max(2.0, 4 * self.poll_s):
            return None
        return self.unready_since.get(app)

    def update(self, details: dict, alive: set[str], now: float) -> None:
        prefixes, unready = [], {}
        for app, info in (details.get("applications") or {}).items():
            if info.get("route_prefix"):
                prefixes.append((info["route_prefix"], app))
            running = [
                replica
                for deployment in (info.get("deployments") or {}).values()
                for replica in deployment.get("replicas") or []
                if replica.get("state") == "RUNNING" and replica.get("actor_name") in alive
            ]
            if not running:
                unready[app] = self.unready_since.get(app, now)
        self.prefixes = sorted(prefixes, key=lambda item: len(item[0]), reverse=True)
        self.unready_since, self.updated_at = unready, now

    async def _run(self) -> None:
        import ray

        from facemask.compat.ray import serve_controller, serve_instance_details

        if not ray.is_initialized():  # not inside a Ray process: nothing to watch, and never start Ray here
            return
        loop = asyncio.get_running_loop()
        controller, details, failures, tick = None, {}, 0, 0
        while True:
            try:
                if controller is None:
                    controller = serve_controller()
                # The replica set changes seldom; read it every 4th tick, or every tick while an app waits for one.
                if tick % 4 == 0 or self.unready_since or not details:
                    details = await asyncio.wait_for(serve_instance_details(controller), 10)
                named = await asyncio.wait_for(asyncio.to_thread(ray.util.list_named_actors, True), 10)
                self.update(details, {actor["name"] for actor in named}, loop.time())
                failures, tick = 0, tick + 1
            except Exception as exc:  # noqa: BLE001 - the guard must outlive a controller restart
                controller, failures = None, failures + 1
                self.prefixes, self.unready_since = [], {}  # unknown: requests wait as they would without the guard
                if failures == 1:
                    log.warning("facemask proxy guard: cannot read Serve's replicas (%s); retrying", exc)
            await asyncio.sleep(self.poll_s)


async def send_error(send, status: int, error: str, message: str, retry_after: int | None = None) -> None:
    """Answer with a JSON error in the API's shape."""
    body = json.dumps({"error": error, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ProxyGuard:
    """ASGI middleware around Serve's proxy app (see the module's docstring)."""

    def __init__(self, app, settings: GuardSettings | None = None) -> None:
        self.app = app
        self.settings = settings or GuardSettings.from_env()
        self.watch = ReplicaWatch(self.settings.poll_s)
        self.reading = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/-/"):
            await self.app(scope, receive, send)
            return
        self.watch.start()
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        body = await self.read_body(scope, receive, send)
        if body is None:
            return
        messages, whole = body
        app = self.watch.app_for(scope["path"])
        retries = self.settings.retries if whole else 0
        while True:
            # Serve's proxy rewrites the scope it is given (path, headers), so each pass gets a fresh copy.
            fresh = {**scope, "headers": list(scope.get("headers") or [])}
            again = Replay(messages, receive)
            outcome = await self.attempt(fresh, again, send, arrived, app)
            if outcome == "answered" or again.disconnected:
                return
            if outcome == "lost" and retries > 0:
                retries -= 1
                log.warning(
                    "facemask proxy guard: %s %s lost with its replica; sending it again",
                    scope["method"],
                    scope["path"],
                )
                continue
            if outcome == "unrouted" and await self.ready_in_time(app, arrived):
                continue
            break
        await send_error(
            send,
            503,
            "unavailable",
            "no replica could answer: one stopped or none is running; retry after the Retry-After seconds",
            retry_after=1,
        )

    async def ready_in_time(self, app: str, arrived: float) -> bool:
        """Wait, until `ready_wait_s` after the request arrived, for `app` to have a running replica."""
        loop = asyncio.get_running_loop()
        while loop.time() < arrived + self.settings.ready_wait_s:
            await asyncio.sleep(self.settings.poll_s)
            if self.watch.waiting_since(app, loop.time()) is None:
                return True
        return False

    async def read_body(self, scope, receive, send) -> tuple[list[dict], bool] | None:
        """The request's messages, and whether they hold the whole body; None when already answered."""
        cap = int(self.settings.max_body_mb * 1024 * 1024)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            return [], False  # over what the guard keeps: the replica reads (and refuses) it
        if self.reading >= self.settings.max_reading:
            await send_error(
                send,
                503,
                "overloaded",
                f"{self.reading} requests are still sending their body; retry after the Retry-After seconds",
                retry_after=1,
            )
            return None
        self.reading += 1
        messages, size = [], 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                while True:
                    message = await receive()
                    messages.append(message)
                    if message["type"] != "http.request":
                        return None  # the client went away
                    size += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return messages, True
                    if size > cap:
                        return messages, False
        except TimeoutError:
            await send_error(
                send,
                408,
                "body_timeout",
                f"the body did not arrive within {self.settings.body_timeout_s:g} s ({size} bytes came)",
            )
            return None
        finally:
            self.reading -= 1

    async def attempt(self, scope, receive, send, arrived: float, app: str | None) -> str:
        """One pass through Serve: "answered", "lost" (no answer: its replica died), "unrouted" (Ray's proxy
        dropped the app's route: no replica is running) or "unavailable" (none came in time)."""
        started: list[int] = []
        held: list[dict] = []

        async def tracked(message: dict) -> None:
            if message["type"] == "http.response.start":
                started.append(message["status"])
                headers = dict(message.get("headers") or [])
                if message["status"] >= 400 and not headers.get(b"content-type", b"").startswith(b"application/json"):
                    held.append(message)  # the proxy's own plain-text error: answered as JSON once its text is in
                    if message["status"] == 404 and app is not None:
                        started.pop()  # a known app's route is gone while it has no running replica
                    return
            elif held and message["type"] == "http.response.body":
                held.append(message)
                if not started:
                    return
                if not message.get("more_body", False):
                    status = held[0]["status"]
                    text = b"".join(m.get("body", b"") for m in held[1:]).decode(errors="replace").strip()
                    retry = dict(held[0].get("headers") or []).get(b"retry-after")
                    await send_error(
                        send,
                        status,
                        PROXY_ERRORS.get(status, "http_error"),
                        text or f"HTTP {status}",
                        int(retry) if retry and retry.isdigit() else None,
                    )
                return
            await send(message)

        call = asyncio.ensure_future(self.app(scope, receive, tracked))
        loop = asyncio.get_running_loop()
        try:
            while not call.done():
                since = self.watch.waiting_since(app, loop.time()) if app is not None and not started else None
                if since is not None and loop.time() >= max(since, arrived) + self.settings.ready_wait_s:
                    call.cancel()
                    await asyncio.gather(call, return_exceptions=True)
                    return "answered" if started else "unavailable"
                await asyncio.wait({call}, timeout=self.settings.poll_s if app is not None else None)
            call.result()
        except Exception as exc:  # noqa: BLE001 - a failure before any answer is what the retry is for
            if started:
                raise
            log.warning("facemask proxy guard: %s %s failed before an answer: %r", scope["method"], scope["path"], exc)
        finally:
            if not call.done():
                call.cancel()
        if started:
            return "answered"
        return "unrouted" if held else "lost"


class Replay:
    """A receive() that gives the kept messages again, then what the client sends next (its disconnect)."""

    def __init__(self, messages: list[dict], receive) -> None:
        self.kept, self.receive, self.disconnected = list(messages), receive, False

    async def __call__(self) -> dict:
        if self.kept:
            return self.kept.pop(0)
        message = await self.receive()
        self.disconnected = message["type"] == "http.disconnect"
        return message


def raw_error(
    status: int, reason: bytes, error: str, message: str, retry_after: int | None = None, close: bool = True
) -> bytes:
    """A whole JSON error answer, for a protocol that has no ASGI app yet (and HAProxy's error
    files): it closes the connection unless `close` is False."""
    body = json.dumps({"error": error, "message": message}).encode()
    extra = (b"retry-after: %d\r\n" % retry_after if retry_after is not None else b"") + (
        b"connection: close\r\n" if close else b""
    )
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
        % (status, reason, len(body), extra)
    ) + body


# What the guard answers before a request reaches the app: status, reason phrase, error code.
TOO_MANY_CONNECTIONS = (503, b"Service Unavailable", "too_many_connections")
HEADERS_TOO_LARGE = (431, b"Request Header Fields Too Large", "headers_too_large")
HEADER_TIMEOUT = (408, b"Request Timeout", "header_timeout")


def bounded_protocol(base: type, settings: GuardSettings) -> type:
    """`base` (uvicorn's httptools protocol) with bounds on header size, header time and connections."""
    max_bytes = settings.max_header_kb * 1024

    class BoundedHttpProtocol(base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_timer = None
            if len(self.connections) > settings.max_connections:
                self._refuse(
                    *TOO_MANY_CONNECTIONS, f"the server holds {settings.max_connections} connections; retry shortly"
                )
                return
            self._start_headers()

        def _start_headers(self) -> None:
            self._header_bytes = 0
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(settings.header_timeout_s, self._headers_late)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._start_headers()

        def on_headers_complete(self) -> None:
            self._stop_header_timer()
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is not None:  # still reading a request line and headers
                room = max_bytes - self._header_bytes
                # Refused before parsing: the parser would take any amount, and dispatch a
                # request whose oversized headers all came in one read.
                if len(data) > room and data.find(b"\r\n\r\n", 0, max(room, 0) + 4) == -1:
                    self._refuse(*HEADERS_TOO_LARGE, f"the request line and headers exceed {settings.max_header_kb} KB")
                    return
                self._header_bytes += len(data)
            super().data_received(data)

        def connection_lost(self, exc) -> None:
            self._stop_header_timer()
            super().connection_lost(exc)

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            self._refuse(*HEADER_TIMEOUT, f"the headers did not arrive within {settings.header_timeout_s:g} s")

        def _refuse(self, status: int, reason: bytes, error: str, message: str) -> None:
            self._stop_header_timer()
            if not self.transport.is_closing():
                self.transport.write(raw_error(status, reason, error, message))
                self.transport.close()

    return BoundedHttpProtocol


def bound_http_server(settings: GuardSettings) -> bool:
    """Make the HTTP server this process starts next use `bounded_protocol`; False where it cannot."""
    from facemask.compat.uvicorn import http_tools_protocol, serve_new_servers_with

    base = http_tools_protocol()
    if base is None:
        log.warning("facemask proxy guard: httptools is missing; header size and time are not bounded")
        return False
    serve_new_servers_with(bounded_protocol(base, settings))
    return True


def middlewares() -> list:
    """The callback Serve's proxy calls (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH) before it starts its server.

    With direct ingress (HAProxy) each replica starts an HTTP server of its own and calls this
    too. There the server keeps its bounds on headers and connections, but not the guard:
    the app it would guard is in the same process, so there is no replica to lose or wait
    for (HAProxy resends what a dead replica held), and its per-request bookkeeping and its
    watch of the controller cost the replica CPU on every request.
    """
    from starlette.middleware import Middleware

    settings = GuardSettings.from_env()
    bound_http_server(settings)
    if in_a_replica():
        log.info("facemask proxy guard: a replica's own HTTP server (direct ingress): header and connection bounds")
        return []
    log.info("facemask proxy guard: on")
    return [Middleware(ProxyGuard, settings=settings)]


def in_a_replica() -> bool:
    """True in a Serve replica's process (it has a replica context), false in Serve's proxy."""
    try:
        from facemask.compat.ray import in_serve_replica

        return in_serve_replica()
    except Exception:  # noqa: BLE001 - not where Ray Serve runs: not a replica
        return False
