"""Where events go: a webhook and MQTT. Each send either succeeds, raises Retry (the receiver
is down, slow or overloaded: try again later) or raises Refused (it answered that this
message will never be taken, a 4xx: retrying cannot help, so it is set aside and counted)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

from facemask.events.rules import Mqtt, Webhook

SIGNATURE_HEADER = "X-Facemask-Signature"  # sha256=<hex HMAC of "<timestamp>.<body>">
TIMESTAMP_HEADER = "X-Facemask-Timestamp"  # seconds; a receiver refuses old ones (replays)
KEY_HEADER = "Idempotency-Key"  # the message's key: a receiver drops one it has seen


class Retry(Exception):
    """Not delivered this time; the outbox tries again after a backoff."""


class Refused(Exception):
    """The receiver will never take this message (a 4xx other than 408 and 429)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str | None, body: bytes, signature: str | None, max_age_s: float = 300) -> bool:
    """A receiver's check: the signature matches and the timestamp is recent (a missing or
    malformed header is a failed check, never an exception)."""
    try:
        fresh = abs(time.time() - float(timestamp or "")) <= max_age_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature or "")


class WebhookSink:
    name = "webhook"

    def __init__(self, cfg: Webhook) -> None:
        import httpx

        self.cfg = cfg
        self.client = httpx.Client(timeout=cfg.timeout_s, follow_redirects=False)

    def send(self, message: dict) -> None:
        import httpx

        body = json.dumps(message, sort_keys=True).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            KEY_HEADER: message["key"],
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.cfg.secret, timestamp, body),
        }
        try:
            answer = self.client.post(self.cfg.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise Retry(f"{type(exc).__name__}: {exc}"[:200]) from None
        if answer.status_code < 300:
            return
        text = f"HTTP {answer.status_code}: {answer.text[:120]}"
        if 400 <= answer.status_code < 500 and answer.status_code not in (408, 429):
            raise Refused(text)
        raise Retry(text)

    def close(self) -> None:
        self.client.close()


class MqttSink:
    """Publishes each message with QoS 1 to `<prefix>/events` (as Frigate's `frigate/events`)
    and `<prefix>/<camera>/events`; a send counts only once the broker has acknowledged it."""

    name = "mqtt"

    def __init__(self, cfg: Mqtt, client_id: str, timeout_s: float = 5.0) -> None:
        self.cfg, self.client_id, self.timeout_s = cfg, client_id, timeout_s
        self.client = None
        self.lock = threading.Lock()

    def _connect(self):
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.password)
        client.will_set(f"{self.cfg.topic_prefix}/available", "offline", qos=1, retain=True)
        try:
            client.connect(self.cfg.host, self.cfg.port, keepalive=30)
        except OSError as exc:
            raise Retry(f"MQTT broker {self.cfg.host}:{self.cfg.port}: {exc}") from None
        client.loop_start()
        client.publish(f"{self.cfg.topic_prefix}/available", "online", qos=1, retain=True)
        return client

    def send(self, message: dict) -> None:
        with self.lock:
            if self.client is None or not self.client.is_connected():
                self.close()
                self.client = self._connect()
            body = json.dumps(message, sort_keys=True)
            topics = (f"{self.cfg.topic_prefix}/events", f"{self.cfg.topic_prefix}/{message['camera']}/events")
            for topic in topics:
                info = self.client.publish(topic, body, qos=1)
                try:
                    info.wait_for_publish(timeout=self.timeout_s)
                except (ValueError, RuntimeError) as exc:  # not queued: the connection is gone
                    self.close()
                    raise Retry(f"MQTT publish to {topic}: {exc}") from None
                if not info.is_published():
                    self.close()
                    raise Retry(f"MQTT publish to {topic}: no acknowledgement within {self.timeout_s:.0f}s")

    def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            client.loop_stop()
            client.disconnect()
