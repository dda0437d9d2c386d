"""Violation events delivered for real: a loopback webhook that checks every signature, and
Debian's Mosquitto as the broker. Nothing is lost and no key arrives as a second event across
a receiver that is down, a broker restarted, and `facemask watch` SIGKILLed in the middle of
an event and started again (the simulated GPU as the model: one unmasked and one badly
masked face on every frame; the model is not what is tested here)."""

from __future__ import annotations

import concurrent.futures
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
from PIL import Image

from facemask.events.hub import EventHub
from facemask.events.rules import EventsConfig, Mqtt, Rule, Webhook
from facemask.events.sinks import MqttSink, WebhookSink
from tests.images import sharpness, video_frames
from tests.receivers import WEBHOOK_SECRET, Mosquitto, MqttListener, WebhookReceiver
from tests.services import API_KEY, CHROMIUM, free_port, launch_chromium, wait_until
from tests.streams import rtsp_missing

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
    assert (tmp_path / "events").stat().st_mode & 0o077 == 0  # snapshots of people: the owner's alone


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
    video, faces = pattern_video(tmp_path / "door.mkv")
    listing = tmp_path / "cameras.yaml"
    rule = {"min_duration_s": 1, "min_observations": 3, "end_after_s": 1, "cooldown_s": 60}
    events = {"rule": rule, "webhook": {"url": receiver.url, "secret_env": "TEST_HOOK_SECRET"}}
    cameras = [{"id": "door", "url": str(video)}]
    listing.write_text(yaml.safe_dump({"events": events, "cameras": cameras}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TEST_HOOK_SECRET": WEBHOOK_SECRET}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "out"
    args = [*FACEMASK, "watch", str(listing), "--out", str(out), "--backend", "simulated-gpu"]

    port = free_port()

    def start(n: int) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"watch{n}.log"
        # The second has its page on (the review page is checked in Chromium), the first none.
        command = args + ["--no-page"] if n == 1 else args + ["--port", str(port)]
        run_env = env if n == 1 else {**env, "FACEMASK_API_KEY": API_KEY}
        return subprocess.Popen(
            command, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=run_env, start_new_session=True
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
        # The second watch also keeps a clip of each event, its faces blurred too.
        events["clip"] = {"before_s": 1, "after_s": 1, "fps": 4, "width": 320}
        listing.write_text(yaml.safe_dump({"events": events, "cameras": cameras}))
        second, log = start(2)
        ended = lambda: {m["event"] for m in receiver.messages if m["kind"] == "end"} >= opened  # noqa: E731
        wait_until(ended, 240, "the killed watch's events ended", second, log)
        wait_until(lambda: kinds()["start"] >= 4, 120, "the second watch's own events", second, log)
        review_in_chromium(f"http://127.0.0.1:{port}/", opened)
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
    # Alert latency: from the moment the rule could first hold (the first sighting + its minimum
    # duration) to the webhook holding the start. A figure for the docs, printed, not a timing assertion.
    latency = [
        receiver.arrived[m["key"]] - m["start"] - rule["min_duration_s"]
        for m in receiver.messages
        if m["kind"] == "start"
    ]
    print(f"alert latency beyond min_duration_s: {', '.join(f'{s:.2f}' for s in sorted(latency))} s")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events"]["started"] == 2 and summary["events"]["backlog"] == {"webhook": 0}
    # Privacy: in every stored snapshot (the default, `blur: all`), no face is left sharp, and in
    # no frame of a clip. The second watch's two clips were written (after_s past their alerts,
    # or at its stop, before the ends that name them).
    snapshots = sorted((out / "events" / "door").glob("*.jpg"))
    clips = sorted((out / "events" / "door").glob("*.webm"))
    assert len(snapshots) == 4 and len(clips) == 2 and summary["events"]["clips"]["written"] == 2
    assert {str(p.relative_to(out)) for p in clips} == {m.get("clip") for m in receiver.messages} - {None}
    images = [np.asarray(Image.open(path).convert("RGB")) for path in snapshots]
    for path in clips:
        frames = video_frames(path)
        assert len(frames) >= 3 and frames[0].shape == (240, 320, 3)  # up to 1 s either side at 4 fps
        images += frames
    for image in images:
        for box, original in faces:
            assert sharpness(inside(image, box)) < 0.25 * original, (
                box,
                sharpness(inside(image, box)),
                original,
            )


def pattern_video(path: Path, width: int = 320, height: int = 240) -> tuple[Path, list]:
    """A 2 s H.264 video whose faces sit where the simulated GPU reports them (its PATTERN, one
    of each class), so that the boxes in the events are real faces; returns the video and each
    face's box with its sharpness in the original frame."""
    import random

    from PIL import ImageDraw

    from facemask.core.classes import CLASS_NAMES
    from facemask.data.synth import draw_face
    from facemask.serving.simulated_gpu import PATTERN

    rng = random.Random(3)
    noise = np.random.default_rng(3).integers(90, 160, (height, width, 3), dtype=np.uint8)
    scene = Image.fromarray(noise)
    draw = ImageDraw.Draw(scene)
    boxes = []
    for class_id, x1, y1, x2, y2, _ in PATTERN:
        box = (int(x1 * width), int(y1 * height), int(x2 * width), int(y2 * height))
        draw_face(draw, rng, box, CLASS_NAMES[class_id])
        boxes.append({"x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3]})
    frame = np.asarray(scene)
    command = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}"]
    command += ["-r", "15", "-i", "-", "-c:v", "libx264", "-preset", "ultrafast", "-g", "15", "-pix_fmt", "yuv420p"]
    subprocess.run([*command, str(path)], input=frame.tobytes() * 30, check=True)
    return path, [(box, sharpness(inside(frame, box))) for box in boxes]


def inside(image: np.ndarray, box: dict, margin: int = 4) -> np.ndarray:
    """A face box's pixels, less a margin (the subject's outline is drawn on its edge)."""
    return image[int(box["y1"]) + margin : int(box["y2"]) - margin, int(box["x1"]) + margin : int(box["x2"]) - margin]


def review_in_chromium(url: str, ended: set[str]) -> None:
    """The review page: every event with its snapshot, the filter, and an acknowledgement that
    reaches the API; a screenshot for the docs when FACEMASK_REVIEW_PNG names a file."""
    import httpx

    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian's chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(url + "events", timeout=10).status_code == 401  # the events need the key, as the cameras do
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1280, "height": 640})
        page.goto(url + "review")
        page.fill("#key", API_KEY)
        page.dispatch_event("#key", "change")
        page.wait_for_function("() => (window.lastEvents || []).length === 4", timeout=30000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('img.snap')].every((i) => i.complete && i.naturalWidth > 0)",
            timeout=30000,
        )
        # This watch's two events get their clips once written (the page is told), and Chromium reads them.
        page.wait_for_function(
            "() => [...document.querySelectorAll('video.clip')].filter((v) => v.readyState >= 1 && v.duration > 0)"
            ".length === 2",
            timeout=30000,
        )
        first = sorted(ended)[0]
        page.fill("#by", "safety officer")
        page.click(f"tr[data-event='{first}'] button")
        page.wait_for_function(
            f"() => (window.lastEvents || []).some((e) => e.event === '{first}' && e.acked_by === 'safety officer')",
            timeout=30000,
        )
        page.select_option("#state", "without_mask")
        page.wait_for_function("() => window.lastEvents.every((e) => e.state === 'without_mask')", timeout=30000)
        if os.environ.get("FACEMASK_REVIEW_PNG"):
            page.select_option("#state", "")
            page.wait_for_function("() => window.lastEvents.length === 4", timeout=30000)
            page.wait_for_timeout(500)
            page.screenshot(path=os.environ["FACEMASK_REVIEW_PNG"])
        browser.close()
    unacked = httpx.get(url + "events", params={"acked": "0"}, headers=auth, timeout=10).json()["events"]
    assert len(unacked) == 3 and first not in {e["event"] for e in unacked}
    # Pushed: a reader held on GET /events/wait is answered by the next change (an acknowledgement
    # here), not by its timeout, which answers the same seq.
    assert httpx.get(url + "events/wait", timeout=10).status_code == 401
    seq = httpx.get(url + "events/wait", params={"timeout_s": 0}, headers=auth, timeout=10).json()["seq"]
    assert seq >= 5  # this watch's: the killed one's 2 events ended, its own 2 started, 1 acknowledgement
    held = concurrent.futures.ThreadPoolExecutor(1).submit(
        httpx.get, url + "events/wait", params={"after": seq, "timeout_s": 30}, headers=auth, timeout=60
    )
    ack = {"by": "test"}
    second = unacked[0]["event"]
    assert httpx.post(f"{url}events/{second}/ack", json=ack, headers=auth, timeout=10).status_code == 200
    assert held.result(timeout=60).json()["seq"] == seq + 1
    snapshot = httpx.get(f"{url}events/{first}/snapshot.jpg", headers=auth, timeout=10)
    assert snapshot.status_code == 200 and snapshot.content[:2] == b"\xff\xd8"
    listed = httpx.get(url + "events", headers=auth, timeout=10).json()["events"]
    clipped = [e["event"] for e in listed if e["clip"]]
    assert len(clipped) == 2 and first not in clipped  # the killed watch kept no clips
    clip = httpx.get(f"{url}events/{clipped[0]}/clip.webm", headers=auth, timeout=10)
    assert clip.status_code == 200 and clip.headers["content-type"] == "video/webm"
    assert clip.content[:4] == b"\x1a\x45\xdf\xa3"  # Matroska's (WebM's) magic
    assert httpx.get(f"{url}events/{first}/clip.webm", headers=auth, timeout=10).status_code == 404
