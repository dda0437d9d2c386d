"""facemask.serving.client.Client against real HTTP servers on loopback: what it retries, and for how long."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from facemask.core.errors import EndpointError
from facemask.core.runtime import free_port
from facemask.serving.client import Client


class Answers(http.server.BaseHTTPRequestHandler):
    """Answers GET /healthz with the next of `script` (status, body, content type), then 200s."""

    script: list = []

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        status, body, kind = self.script.pop(0) if self.script else (200, b'{"status": "ok"}', "application/json")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def log_message(self, *args) -> None:
        pass


def serve(port: int, after_s: float, script: list) -> http.server.HTTPServer:
    handler = type("Scripted", (Answers,), {"script": list(script)})
    holder: dict = {}

    def run() -> None:
        time.sleep(after_s)
        holder["server"] = http.server.HTTPServer(("127.0.0.1", port), handler)
        holder["server"].serve_forever()

    threading.Thread(target=run, daemon=True).start()
    return holder


def test_a_refused_connection_is_retried_until_the_server_answers():
    port = free_port()
    holder = serve(port, after_s=2.0, script=[])
    started = time.monotonic()
    assert Client(f"http://127.0.0.1:{port}", deadline_s=30).health() == {"status": "ok"}
    assert 2.0 <= time.monotonic() - started < 6.0
    holder["server"].shutdown()


def test_a_refused_connection_fails_once_the_deadline_has_passed():
    started = time.monotonic()
    with pytest.raises(OSError):
        Client(f"http://127.0.0.1:{free_port()}", deadline_s=2).health()
    assert time.monotonic() - started < 4.0


def test_a_bare_404_from_a_restarting_ingress_is_retried_but_the_apps_4xx_is_not():
    port = free_port()
    holder = serve(port, 0, [(404, b"<html>no route</html>", "text/html"), (503, b"{}", "application/json")])
    time.sleep(0.5)
    assert Client(f"http://127.0.0.1:{port}", backoff_s=0.05).health() == {"status": "ok"}
    holder["server"].shutdown()
    port = free_port()
    error = json.dumps({"error": "model_not_found", "message": "no version 9"}).encode()
    holder = serve(port, 0, [(404, error, "application/json")])
    time.sleep(0.5)
    started = time.monotonic()
    with pytest.raises(EndpointError, match="404 model_not_found: no version 9"):
        Client(f"http://127.0.0.1:{port}").health()
    assert time.monotonic() - started < 1.0
    holder["server"].shutdown()


def test_query_exits_1_when_the_endpoint_fails_and_2_when_it_refuses_the_input(tmp_path):
    """A script tells "the server broke" (1) from "fix your request" (2) by the exit code alone."""
    from click.testing import CliRunner

    from facemask.cli import main

    image = tmp_path / "a.jpg"
    image.write_bytes(b"not really a jpeg: the scripted server does not look")
    failed = (500, json.dumps({"error": "internal", "message": "the model crashed"}).encode(), "application/json")
    refused = (422, json.dumps({"error": "bad_image", "message": "cannot decode"}).encode(), "application/json")
    port = free_port()
    holder = serve(port, after_s=0, script=[failed, refused])
    url = f"http://127.0.0.1:{port}"
    try:
        args = ["query", str(image), "--url", url, "--deadline", "10"]
        first, second = CliRunner().invoke(main, args), CliRunner().invoke(main, args)
        assert first.exit_code == 1 and f"500 internal: {url}: the model crashed" in first.stderr, first.output
        assert second.exit_code == 2 and f"422 bad_image: {url}: cannot decode" in second.stderr, second.output
    finally:
        holder["server"].shutdown()
