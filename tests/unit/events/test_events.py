"""Violation events without a camera: the rule and its mistakes, the consensus that opens and
ends an event, blurred evidence within its limits, and the outbox's at-least-once delivery
across failures and a crash (a real SQLite file, a real HTTP receiver)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from facemask.core.errors import ConfigError
from facemask.events.evidence import EvidenceStore, blur_faces, snapshot
from facemask.events.outbox import Outbox
from facemask.events.people import PersonEvents
from facemask.events.rules import Rule, Webhook, load_events_config
from facemask.events.sinks import Refused, Retry, WebhookSink
from tests.images import sharpness
from tests.receivers import WEBHOOK_SECRET, WebhookReceiver

ENV = {"HOOK_SECRET": WEBHOOK_SECRET}


def events_of(tmp_path: Path, section: dict | None, cameras: list | None = None, env=ENV):
    data = {"cameras": cameras or [{"id": "door", "url": "door.mp4"}]}
    if section is not None:
        data["events"] = section
    path = tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_events_config(yaml.safe_load(path.read_text()), path, env)


def test_the_events_section_is_read_with_per_camera_rules_and_secrets_from_the_environment(tmp_path):
    hook = {"url": "http://127.0.0.1:9/hook", "secret_env": "HOOK_SECRET"}
    cameras = [
        {"id": "door", "url": "d.mp4", "rule": {"min_duration_s": 10}, "blur": "others"},
        {"id": "hall", "url": "h.mp4"},
    ]
    cfg = events_of(tmp_path, {"rule": {"min_observations": 5}, "webhook": hook}, cameras)
    assert cfg.webhook.secret == WEBHOOK_SECRET and WEBHOOK_SECRET not in repr(cfg)
    door, hall = cfg.for_camera("door"), cfg.for_camera("hall")
    assert door == (Rule(min_duration_s=10, min_observations=5), "others")  # the section's fields carry over
    assert hall == (Rule(min_observations=5), "all") and cfg.sinks == ["webhook"]
    assert events_of(tmp_path, None) is None  # no section: events are off


@pytest.mark.parametrize(
    "section, cameras, says",
    [
        ({"rule": {"states": ["no_mask"]}}, None, "events.rule.states"),
        ({"rule": {"agreement": 0.4}}, None, "events.rule.agreement 0.4: must be above 0.5"),
        ({"rule": {"min_duration": 5}}, None, "events.rule: unknown field 'min_duration'"),
        ({"blur": "some"}, None, "events.blur 'some'"),
        ({"webhook": {"url": "h", "secret_env": "HOOK_SECRET"}}, None, "events.webhook.url 'h'"),
        ({"webhook": {"url": "http://x/h", "secret": "s3cr3t-inline"}}, None, "a secret is never written"),
        ({"webhook": {"url": "http://x/h", "secret_env": "UNSET_VAR"}}, None, "UNSET_VAR is not set; export it"),
        ({"webhook": {"url": "http://x/h"}}, None, "give secret_env or secret_file"),
        ({"mqtt": {"host": "b", "topic_prefix": "a/#"}}, None, "events.mqtt.topic_prefix 'a/#'"),
        ({"mqtt": {"host": "b", "password_env": "HOOK_SECRET"}}, None, "a password without `username`"),
        ({}, [{"id": "door", "url": "d", "blur": "faces"}], "camera 'door': field `blur` 'faces'"),
        (None, [{"id": "door", "url": "d", "rule": {}}], "has no `events:` section"),
    ],
)
def test_a_mistake_is_refused_naming_the_file_the_camera_and_the_field(tmp_path, section, cameras, says):
    with pytest.raises(ConfigError) as caught:
        events_of(tmp_path, section, cameras)
    assert says in str(caught.value) and str(tmp_path / "cameras.yaml") in str(caught.value)


def test_a_placeholder_secret_is_refused_and_a_file_secret_is_read(tmp_path):
    with pytest.raises(ConfigError, match="placeholder"):
        events_of(tmp_path, {"webhook": {"url": "http://x/h", "secret_env": "S"}}, env={"S": "CHANGE-ME-please"})
    (tmp_path / "hook.key").write_text(WEBHOOK_SECRET + "\n")
    cfg = events_of(tmp_path, {"webhook": {"url": "http://x/h", "secret_file": "hook.key"}}, env={})
    assert cfg.webhook.secret == WEBHOOK_SECRET


RULE = Rule(min_duration_s=2.0, min_observations=3, agreement=0.6, cooldown_s=10.0, end_after_s=1.0)


def feed(events: PersonEvents, sightings, track=1, start=100.0, step=0.5):
    """Sightings of one person, one every `step` s; returns every change, with its time."""
    changes = []
    for i, (state, score) in enumerate(sightings):
        at = start + i * step
        changes += [(kind, e, at) for kind, e in events.observe(track, state, score, at, {"frame": i})]
        changes += [(kind, e, at) for kind, e in events.tick(at)]
    return changes


def test_an_event_opens_once_the_consensus_has_held_for_the_minimum_duration():
    events = PersonEvents("door", RULE, "run1", "models:/m/3")
    # 0.0 s to 2.0 s unmasked, one misread frame among them: opens at 2.0 s, the start of the streak.
    seen = [
        ("without_mask", 0.8),
        ("without_mask", 0.9),
        ("with_mask", 0.7),
        ("without_mask", 0.95),
        ("without_mask", 0.6),
    ]
    changes = feed(events, seen)
    assert [(k, at) for k, _, at in changes] == [("start", 102.0)]
    event = changes[0][1]
    assert event.state == "without_mask" and event.start == 100.0 and event.model_version == "models:/m/3"
    assert event.best == {"frame": 3, "score": 0.95}  # the best violating sighting: its frame makes the snapshot
    message = event.to_message("start")
    assert message["key"] == f"{event.key}:start" and "run1" in event.key and message["observations"] == 5


def test_a_single_misread_frame_or_a_short_glimpse_raises_nothing():
    events = PersonEvents("door", RULE, "run1")
    assert feed(events, [("with_mask", 0.9), ("without_mask", 0.5), ("with_mask", 0.9), ("with_mask", 0.9)] * 3) == []
    assert feed(events, [("without_mask", 0.9)] * 4, track=2) == []  # 1.5 s: under the minimum duration
    assert events.tick(110.0) == [] and events.tracks == {}  # stale streaks are forgotten: bounded state


def test_an_event_ends_after_the_person_is_compliant_and_the_cooldown_holds_off_a_new_one():
    events = PersonEvents("door", RULE, "run1")
    changes = feed(events, [("without_mask", 0.9)] * 6 + [("with_mask", 0.9)] * 4)
    assert [(k, at) for k, _, at in changes] == [("start", 102.0), ("end", 103.5)]
    ended = changes[1][1]
    assert ended.end == 102.5 and ended.end_reason == "compliant or gone"  # ends at the last violating sighting
    # Unmasked again 3 s later: within the 10 s cooldown, no new event; after it, a new one.
    assert feed(events, [("without_mask", 0.9)] * 8, start=106.0) == []
    later = feed(events, [("without_mask", 0.9)] * 6, start=120.0)
    assert [k for k, _, _ in later] == ["start"] and later[0][1].key != ended.key


def test_a_stop_ends_every_open_event():
    events = PersonEvents("door", RULE, "run1")
    feed(events, [("mask_weared_incorrect", 0.7)] * 6)
    (kind, event), *rest = events.close_all(104.0)
    assert kind == "end" and not rest and event.end_reason == "watch stopped" and event.state == "mask_weared_incorrect"


def test_snapshots_blur_every_face_by_default_and_all_but_the_subject_in_others_mode():
    import cv2

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)  # detail everywhere, as a face has
    faces = [{"x1": 20, "y1": 30, "x2": 100, "y2": 130}, {"x1": 180, "y1": 40, "x2": 260, "y2": 150}]

    def crop(image, box):
        return image[box["y1"] : box["y2"], box["x1"] : box["x2"]]

    def decoded(jpeg):
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    inner = [
        {k: v + (4 if k[0] in "xy" and k[1] == "1" else -4) for k, v in f.items()} for f in faces
    ]  # inside the outline
    every = decoded(snapshot(frame, faces, faces[0], "all"))
    others = decoded(snapshot(frame, faces, faces[0], "others"))
    plain = decoded(snapshot(frame, faces, faces[0], "none"))
    original = [sharpness(crop(frame, box)) for box in inner]
    assert all(sharpness(crop(every, box)) < 0.02 * o for box, o in zip(inner, original))
    assert sharpness(crop(others, inner[0])) > 0.5 * original[0]  # the subject kept, for review
    assert sharpness(crop(others, inner[1])) < 0.02 * original[1]
    assert all(sharpness(crop(plain, box)) > 0.5 * o for box, o in zip(inner, original))
    assert np.array_equal(blur_faces(frame, []), frame)


def test_evidence_keeps_within_its_size_and_age(tmp_path):
    store = EvidenceStore(tmp_path, max_bytes=2500, max_age_s=3600)
    for i in range(5):
        path = store.write("door", f"e{i}", bytes(1000))
        os.utime(path, (time.time() - 10 + i,) * 2)
    store.prune()
    assert sorted(p.name for p in (tmp_path / "door").iterdir()) == ["e3.jpg", "e4.jpg"]  # the newest that fit
    os.utime(tmp_path / "door" / "e3.jpg", (time.time() - 7200,) * 2)
    assert store.prune() == 1 and [p.name for p in (tmp_path / "door").iterdir()] == ["e4.jpg"]


class Flaky:
    """A sink that fails its first `failures` sends (Retry), or refuses all (Refused)."""

    name = "flaky"

    def __init__(self, failures: int = 0, refuse: bool = False) -> None:
        self.failures, self.refuse, self.sent = failures, refuse, []

    def send(self, message: dict) -> None:
        if self.refuse:
            raise Refused("HTTP 400: bad")
        if self.failures > 0:
            self.failures -= 1
            raise Retry("down")
        self.sent.append(message["key"])

    def close(self) -> None:
        pass


def test_the_outbox_keeps_each_key_once_retries_with_backoff_and_sets_a_refusal_aside(tmp_path):
    sink = Flaky(failures=2)
    outbox = Outbox(tmp_path / "outbox.sqlite", [sink])
    outbox.put({"key": "a:start", "camera": "door"})
    outbox.put({"key": "a:start", "camera": "door"})  # the same key again: kept once
    assert outbox.backlog() == {"flaky": 1}
    now = time.time()
    assert outbox.deliver_due(now) == 0 and outbox.deliver_due(now + 0.1) == 0  # backing off: not due yet
    assert outbox.deliver_due(now + 1.1) == 0 and outbox.deliver_due(now + 10) == 1  # 1 s, then up to 2 s
    assert sink.sent == ["a:start"] and outbox.backlog() == {"flaky": 0} and outbox.counts["retried"] == 2
    refusing = Outbox(tmp_path / "refusing.sqlite", [Flaky(refuse=True)])
    refusing.put({"key": "b:start", "camera": "door"})
    refusing.deliver_due()
    assert refusing.backlog() == {"flaky": 0} and refusing.counts["refused"] == 1
    (error,) = refusing.db.execute("SELECT last_error FROM outbox WHERE status = 'refused'").fetchone()
    assert error == "HTTP 400: bad"


def test_what_a_crashed_outbox_held_is_delivered_by_the_next_one(tmp_path):
    path = tmp_path / "outbox.sqlite"
    first = Outbox(path, [Flaky(failures=100)])
    event = {"camera": "door", "state": "without_mask", "start": 100.0}
    first.put({"key": "a:start", "event": "a", **event})
    first.put({"key": "b:start", "event": "b", **event})
    first.put({"key": "b:end", "event": "b", **event, "end": 104.0})
    first.deliver_due()
    del first  # no stop, no flush: as a kill leaves it
    sink = Flaky()
    second = Outbox(path, [sink])
    assert [e["event"] for e in second.left_open()] == ["a"]  # b ended; a was open when the process died
    while second.deliver_due(time.time() + 120):
        pass
    assert sorted(sink.sent) == ["a:start", "b:end", "b:start"]
    # The review's copy survived too: each event once, with its latest message.
    assert {e["event"]: e.get("end") for e in second.events()} == {"a": None, "b": 104.0}
    assert second.acknowledge("b", "j.doe") and not second.acknowledge("zzz", "j.doe")
    assert [e["event"] for e in second.events(acked=False)] == ["a"]


def test_the_webhook_signs_each_message_and_tells_a_refusal_from_an_outage():
    receiver = WebhookReceiver()
    try:
        sink = WebhookSink(Webhook(receiver.url, WEBHOOK_SECRET, timeout_s=2))
        sink.send({"key": "a:start", "camera": "door"})
        assert receiver.keys() == {"a:start": 1} and receiver.bad_signatures == 0
        receiver.answer = 503
        with pytest.raises(Retry, match="HTTP 503"):
            sink.send({"key": "b:start", "camera": "door"})
        receiver.answer = 422
        with pytest.raises(Refused, match="HTTP 422"):
            sink.send({"key": "b:start", "camera": "door"})
        receiver.answer = 200
        wrong = WebhookSink(Webhook(receiver.url, "another-key-123456", timeout_s=2))
        with pytest.raises(Refused, match="HTTP 401"):
            wrong.send({"key": "c:start", "camera": "door"})
        receiver.down()
        with pytest.raises(Retry, match="ConnectError"):
            sink.send({"key": "d:start", "camera": "door"})
    finally:
        receiver.down()


def test_a_receiver_refuses_a_stale_forged_or_missing_signature():
    from facemask.events.sinks import sign, verify

    now = str(int(time.time()))
    body = b'{"key": "a:start"}'
    assert verify(WEBHOOK_SECRET, now, body, sign(WEBHOOK_SECRET, now, body))
    assert not verify(WEBHOOK_SECRET, now, body + b" ", sign(WEBHOOK_SECRET, now, body))  # body changed
    old = str(int(time.time()) - 3600)
    assert not verify(WEBHOOK_SECRET, old, body, sign(WEBHOOK_SECRET, old, body))  # a replay an hour later
    assert not verify(WEBHOOK_SECRET, None, body, None) and not verify(WEBHOOK_SECRET, "soon", body, "x")


def test_an_event_whose_snapshot_failed_says_so_at_its_end_too(tmp_path):
    from facemask.events.hub import EventHub
    from facemask.events.rules import EventsConfig

    def broken(frame):
        raise OSError("the frame is gone")

    hub = EventHub(EventsConfig(rule=RULE), tmp_path, "v1", sinks=[])
    person = {"track_id": 1, "label": "without_mask", "confidence": 0.9, "box": {"x1": 0, "y1": 0, "x2": 9, "y2": 9}}
    for i in range(8):
        hub.frame("door", [person], 100.0 + i * 0.5, frame=None, fetch=broken)
    hub.frame("door", [], 110.0, frame=None, fetch=broken)
    hub.close(fetch=broken)
    messages = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [m["kind"] for m in messages] == ["start", "end"]
    assert [m["snapshot"] for m in messages] == [None, None] and hub.summary()["snapshot_errors"] == 1


def test_a_review_reader_is_answered_by_the_next_change_or_by_its_timeout():
    import threading

    from facemask.events.hub import Changes

    changes = Changes()
    assert changes.wait(0, 0.01) == 0  # nothing new: the timeout answers the count as it is
    threading.Timer(0.05, changes.bump).start()
    assert changes.wait(0, 30) == 1  # answered by the change, long before 30 s
    assert changes.wait(0, 0) == 1  # a reader behind the count is answered at once
