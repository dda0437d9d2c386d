"""Real receivers of violation events for tests: a webhook on a loopback HTTP server that
checks each message's HMAC signature, and Debian's Mosquitto as the MQTT broker.

Both are real servers on loopback; each test starts and stops its own, by PID."""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from facemask.core.lifecycle import stop_process_group
from facemask.core.runtime import free_port
from facemask.events.sinks import KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

WEBHOOK_SECRET = "webhook-test-key-8a1c7e"
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


class WebhookReceiver:
    """Records every message it accepts (in arrival order); `answer` sets the status it gives.
    `down()` closes its socket (senders get "connection refused"), `up()` listens again on the
    same port."""

    def __init__(self, secret: str = WEBHOOK_SECRET) -> None:
        self.secret, self.port = secret, free_port()
        self.messages: list[dict] = []
        self.arrived: dict[str, float] = {}  # key -> when it was first taken (alert latency)
        self.bad_signatures = 0
        self.answer = 200
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the standard library's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = verify(receiver.secret, self.headers[TIMESTAMP_HEADER], body, self.headers[SIGNATURE_HEADER])
                message = json.loads(body)
                with receiver.lock:
                    status = receiver.answer if ok else 401
                    receiver.bad_signatures += not ok
                    if status < 300:
                        assert self.headers[KEY_HEADER] == message["key"]
                        receiver.messages.append(message)
                        receiver.arrived.setdefault(message["key"], time.time())
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.allow_reuse_address = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def keys(self) -> Counter:
        with self.lock:
            return Counter(m["key"] for m in self.messages)


class Mosquitto:
    """Debian's broker on a loopback port, persistent (a restart keeps queued QoS 1 messages)."""

    def __init__(self, folder: Path) -> None:
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (Debian's mosquitto; .ci/run installs it)")
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        # `user`: run as root, the broker would switch to the `mosquitto` user, which cannot
        # write its persistence file in a test's folder.
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\nuser {getpass.getuser()}\n"
        )
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        from tests.services import wait_until

        log = open(self.folder / "mosquitto.log", "ab")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_until(lambda: _accepts(self.port), 20, "mosquitto listening", self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, grace_s=10)
            self.proc = None


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class MqttListener:
    """A subscriber with a persistent session (QoS 1): what the broker queued while it was
    restarting is delivered once it is back."""

    def __init__(self, port: int, topics: list[str]) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[dict] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-listener", clean_session=False)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda client, *_: client.subscribe([(topic, 1) for topic in topics])
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append(json.loads(msg.payload))

    def keys(self) -> Counter:
        with self.lock:
            return Counter(m["key"] for m in self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
