"""Violation events delivered for real: a loopback webhook that checks every signature, and
Debian's Mosquitto as the broker. Nothing is lost and no key arrives as a second event across
a receiver that is down, a broker restarted, and `facemask watch` SIGKILLed in the middle of
an event and started again (the simulated GPU as the model: one unmasked and one badly
masked face on every frame; the model is not what is tested here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from facemask.events.hub import EventHub
from facemask.events.rules import EventsConfig, Mqtt, Rule, Webhook
from facemask.events.sinks import MqttSink, WebhookSink
from tests.receivers import WEBHOOK_SECRET, Mosquitto, MqttListener, WebhookReceiver
from tests.services import wait_until
from tests.streams import make_video, rtsp_missing

pytestmark = pytest.mark.integration
FACEMASK = [sys.executable, "-m", "facemask.cli"]
RULE = Rule(min_duration_s=0.4, min_observations=3, agreement=0.6, cooldown_s=0.0, end_after_s=0.3)
FRAME = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)


def person(track: int, state: str = "without_mask") -> dict:
    box = {"x1": 10.0 + 40 * track, "y1": 20.0, "x2": 40.0 + 40 * track, "y2": 60.0}
    return {"track_id": track, "label": state, "confidence": 0.9, "box": box}


def people_come_and_go(hub: EventHub, persons: range, camera: str = "door") -> None:
    """Each person is seen unmasked for 0.6 s (an event starts), then leaves (it ends)."""
    for track in persons:
        for _ in range(7):
            hub.frame(camera, [person(track)], time.time(), FRAME, fetch=lambda frame: frame)
            time.sleep(0.1)  # a camera's frame interval: the rule counts seconds of real sightings
    for _ in range(5):
        hub.frame(camera, [], time.time(), FRAME, fetch=lambda frame: frame)
        time.sleep(0.1)


def sent_keys(out: Path) -> Counter:
    lines = (out / "events.jsonl").read_text().splitlines() if (out / "events.jsonl").exists() else []
    return Counter(json.loads(line)["key"] for line in lines)


def test_a_webhook_down_for_a_while_gets_every_event_once_it_is_back(tmp_path):
    receiver = WebhookReceiver()
    cfg = EventsConfig(rule=RULE, webhook=Webhook(receiver.url, WEBHOOK_SECRET, timeout_s=2))
    hub = EventHub(cfg, tmp_path, "models:/facemask-detector/3", sinks=[WebhookSink(cfg.webhook)])
    try:
        people_come_and_go(hub, range(1, 3))
        wait_until(lambda: len(receiver.keys()) == 4, 30, "two events' starts and ends")
        receiver.down()
        people_come_and_go(hub, range(3, 6))  # three more events while the receiver is down
        assert hub.outbox.backlog()["webhook"] == 6 and len(receiver.keys()) == 4
        outage_s = 8.0  # a deliberate outage: the outbox backs off (1, 2, 4 s ...) and keeps everything
        time.sleep(outage_s)
        receiver.up()
        wait_until(lambda: len(receiver.keys()) == 10, 30, "the six messages kept while it was down")
    finally:
        hub.close(fetch=lambda frame: frame)
        receiver.down()
    assert receiver.keys() == sent_keys(tmp_path) and set(receiver.keys().values()) == {1}
    assert receiver.bad_signatures == 0 and hub.outbox.counts["retried"] >= 1
    starts = [m for m in receiver.messages if m["kind"] == "start"]
    assert all(m["state"] == "without_mask" and m["model_version"].endswith("/3") for m in starts)
    snapshots = [tmp_path / m["snapshot"] for m in starts]
    assert len(snapshots) == 5 and all(p.is_file() for p in snapshots)  # evidence for every event


def test_mqtt_events_survive_a_broker_restart(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    listener = MqttListener(broker.port, ["facemask/events", "facemask/door/events"])
    cfg = EventsConfig(rule=RULE, mqtt=Mqtt("127.0.0.1", broker.port))
    hub = EventHub(cfg, tmp_path / "out", None, sinks=[MqttSink(cfg.mqtt, "facemask-watch-test", timeout_s=2)])
    try:
        wait_until(lambda: listener.client.is_connected(), 20, "the listener connected")
        people_come_and_go(hub, range(1, 3))
        wait_until(lambda: len(listener.keys()) == 4, 30, "two events' starts and ends over MQTT")
        broker.stop()
        people_come_and_go(hub, range(3, 5))  # two more events while the broker is down
        assert hub.outbox.backlog()["mqtt"] == 4
        broker.start()
        wait_until(lambda: len(listener.keys()) == 8, 60, "the events kept while the broker was down")
    finally:
        hub.close(fetch=lambda frame: frame)
        listener.close()
        broker.stop()
    # Each message on both topics (all events, and the camera's), each key once per topic.
    per_topic = Counter(listener.keys())
    assert set(per_topic) == set(sent_keys(tmp_path / "out")) and set(per_topic.values()) == {2}, per_topic


def test_a_watch_killed_in_the_middle_of_an_event_ends_it_when_started_again(tmp_path):
    """SIGKILL (no handler runs) while events are open; the next start ends them under their
    own keys before anything else, and a stop ends its own: every start has one end, no key twice."""
    if rtsp_missing() and not __import__("shutil").which("ffmpeg"):
        pytest.skip("ffmpeg is not installed (Debian's ffmpeg; .ci/run installs it)")
    receiver = WebhookReceiver()
    video = make_video(tmp_path / "door.mkv", 160, 120, fps=15, seconds=2)
    listing = tmp_path / "cameras.yaml"
    rule = {"min_duration_s": 1, "min_observations": 3, "end_after_s": 1, "cooldown_s": 60}
    events = {"rule": rule, "webhook": {"url": receiver.url, "secret_env": "TEST_HOOK_SECRET"}}
    listing.write_text(yaml.safe_dump({"events": events, "cameras": [{"id": "door", "url": str(video)}]}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TEST_HOOK_SECRET": WEBHOOK_SECRET}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "out"
    args = [*FACEMASK, "watch", str(listing), "--out", str(out), "--backend", "simulated-gpu", "--no-page"]

    def start(n: int) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"watch{n}.log"
        return subprocess.Popen(
            args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        ), log

    def kinds() -> Counter:
        return Counter(m["kind"] for m in receiver.messages)

    try:
        first, log = start(1)
        # Two people (one unmasked, one badly masked) raise two events.
        wait_until(lambda: kinds()["start"] >= 2, 240, "two events started", first, log)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        opened = {m["event"] for m in receiver.messages if m["kind"] == "start"}
        assert not any(m["kind"] == "end" for m in receiver.messages)
        second, log = start(2)
        ended = lambda: {m["event"] for m in receiver.messages if m["kind"] == "end"} >= opened  # noqa: E731
        wait_until(ended, 240, "the killed watch's events ended", second, log)
        wait_until(lambda: kinds()["start"] >= 4, 120, "the second watch's own events", second, log)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 143, log.read_text()[-2000:]
    finally:
        for proc in (locals().get("first"), locals().get("second")):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        receiver.down()
    keys = receiver.keys()
    assert set(keys.values()) == {1} and receiver.bad_signatures == 0, keys
    by_event: dict[str, list[str]] = {}
    for m in receiver.messages:
        by_event.setdefault(m["event"], []).append(m["kind"])
    assert len(by_event) == 4 and all(sorted(k) == ["end", "start"] for k in by_event.values()), by_event
    restarted = [m for m in receiver.messages if m["event"] in opened and m["kind"] == "end"]
    assert all("ended when it started again" in m["end_reason"] for m in restarted)
    assert {m["state"] for m in receiver.messages} == {"without_mask", "mask_weared_incorrect"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events"]["started"] == 2 and summary["events"]["backlog"] == {"webhook": 0}
    # Faces in the stored snapshots are blurred by default (measured in tests/unit/test_events.py).
    assert len(list((out / "events" / "door").glob("*.jpg"))) == 4
