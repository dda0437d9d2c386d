"""The hostile review's items that live in pure code (issue items 6, 7, 9, 14 and 15): retired
gauges, a bounded tracker that follows the processed rate, a garbage collection callers cannot
drive, and failures that cost one frame or one group rather than a stream or a batch."""

from __future__ import annotations

import asyncio
import gc
import json
import math
from types import SimpleNamespace

import pytest

from facemask.serving.live.tracker import PeopleTracker
from facemask.video.watch.compliance import CameraCompliance


def face(x: float, label: str = "without_mask", size: float = 40.0, conf: float = 0.9) -> dict:
    return {
        "label": label,
        "class_id": 1,
        "confidence": conf,
        "box": {"x1": x, "y1": 50, "x2": x + size, "y2": 50 + size},
    }


class RecordedGauge:
    """`ray.util.metrics.Gauge` as the exporter sees it: the last value set per tag set."""

    made: list[RecordedGauge] = []

    def __init__(self, name: str, description: str = "", tag_keys: tuple = ()) -> None:
        self.name, self.values = name, {}
        RecordedGauge.made.append(self)

    def set(self, value: float, tags: dict | None = None) -> None:
        self.values[tuple(sorted((tags or {}).items()))] = value

    def exported(self) -> dict:
        """What Ray 2.60 exports: NaN values are not (serving.metrics' docstring)."""
        return {tags: v for tags, v in self.values.items() if not math.isnan(v)}


@pytest.fixture()
def gauges(monkeypatch):
    import ray.util.metrics

    RecordedGauge.made = []
    monkeypatch.setattr(ray.util.metrics, "Gauge", RecordedGauge)
    return RecordedGauge.made


def test_item_6_a_closed_live_stream_and_a_removed_camera_leave_the_export(gauges):
    from facemask.serving.metrics import LiveGauges
    from facemask.video.watch.metrics import WatchMetrics

    live = LiveGauges()
    summary = {"by_class": {"with_mask": 2, "without_mask": 1, "mask_weared_incorrect": 0}}
    for stream in ("1", "2"):
        live.set(stream, summary["by_class"], 2 / 3)
    live.retire("1")
    people = next(g for g in gauges if g.name == "facemask_live_people")
    exported_streams = {dict(tags)["stream"] for tags in people.exported()}
    assert exported_streams == {"2"}, people.values
    assert sum(people.exported().values()) == 3  # sums count only the open stream

    gauges.clear()
    with pytest.MonkeyPatch.context() as patch:
        import ray.util.metrics

        patch.setattr(ray.util.metrics, "Counter", lambda *a, **k: SimpleNamespace(inc=lambda *a, **k: None))
        patch.setattr(ray.util.metrics, "Histogram", lambda *a, **k: SimpleNamespace(observe=lambda *a, **k: None))
        watch = WatchMetrics()
    row = {"camera": "dock", "by_class": summary["by_class"], "compliance": 0.5}
    watch.window(row)
    watch.camera_up("dock", True)
    watch.retire("dock")
    watch.refresh()  # a removed camera is not set again
    for gauge in gauges:
        assert not any(dict(tags).get("stream") == "dock" or dict(tags).get("camera") == "dock"
                       for tags in gauge.exported()), (gauge.name, gauge.values)  # fmt: skip


def test_item_7_a_stream_open_for_hours_holds_only_the_people_in_view_and_counts_everyone():
    tracker = PeopleTracker(frame_rate=10)
    t, people = 0.0, 0
    # 300 people walk past one after another, each in view for 1 s at 10 fps, 2 s apart (simulated time).
    for person in range(300):
        for step in range(10):
            tracker.update([face(20 + 5 * step, "with_mask" if person % 3 else "without_mask")], at=t)
            t += 0.1
        for _ in range(10):
            tracker.update([], at=t)
            t += 0.1
        people += 1
    assert len(tracker.people) <= 10 * 2 + 5, len(tracker.people)  # about FORGET_S worth of people, not 300
    summary = tracker.summary()
    assert summary["people"] == people and summary["by_class"]["without_mask"] == 100, summary


def test_item_14_an_occluded_person_at_the_processed_rate_is_counted_once():
    # The camera's configured rate (15, the watch's default) is not the rate frames are processed
    # at (30 here): a face hidden for 0.8 s must keep its track, as it would at 15 fps.
    compliance = CameraCompliance("door", window_s=60, keep_windows=1, frame_rate=15, show_conf=0.25)
    t = 0.0
    for phase, frames in (("seen", 60), ("hidden", 24), ("seen", 30)):
        for _ in range(frames):
            compliance.update([face(100)] if phase == "seen" else [], None, 640, 360, at=t)
            t += 1 / 30
    row = compliance.close(compliance.start + 60)
    assert row["people"] == 1, row


def test_item_9_asking_for_stream_stats_in_a_loop_collects_no_garbage_in_a_loop():
    from facemask.serving.live.session import LiveStreams

    streams = LiveStreams(SimpleNamespace())
    collections = []

    def counted(phase, info):
        if phase == "start" and info["generation"] == 2:
            collections.append(info)

    async def ask(times: int) -> dict:
        out = None
        for _ in range(times):
            out = streams.stats()
            out = await out if asyncio.iscoroutine(out) else out
        return out

    gc.callbacks.append(counted)
    try:
        stats = asyncio.run(ask(50))
        assert stats["open"] == 0 and len(collections) == 0, len(collections)
        streams.closed_since_gc = True  # a stream closed: one collection frees its tracker
        asyncio.run(ask(50))
        assert len(collections) == 1, len(collections)
    finally:
        gc.callbacks.remove(counted)


def test_item_15_a_model_error_costs_the_frame_not_the_live_stream():
    from facemask.serving.live.session import LiveSession, LiveStreams
    from facemask.serving.live.settings import LIVE_DEFAULTS

    class FailingInference:
        def check_frame(self, data):
            pass

        def admitted(self, refusal):
            import contextlib

            return contextlib.asynccontextmanager(lambda: (yield))()

        async def detect(self, *args):
            raise RuntimeError("CUDA error: out of memory")

    async def model_for_id(model_id):
        return SimpleNamespace(point=None)

    server = SimpleNamespace(inference=FailingInference(), model_for_id=model_for_id)
    streams = LiveStreams(server)
    session = LiveSession(dict(LIVE_DEFAULTS), PeopleTracker())
    answer = asyncio.run(streams.frame((0, b"jpeg", 0.0), session))
    assert answer["type"] == "error" and answer["error"] == "model_error" and answer["frame"] == 0, answer
    assert "stays open" in answer["message"] and "out of memory" not in json.dumps(answer)


def test_item_15_a_key_that_is_not_a_string_is_refused_with_4401():
    from facemask.serving.live.session import CLOSE_UNAUTHORIZED, LiveStreams

    class Socket:
        headers: dict = {}

        def __init__(self, hello: dict) -> None:
            self.hello, self.sent, self.closed = json.dumps(hello), [], None

        async def receive_text(self) -> str:
            return self.hello

        async def send_text(self, text: str) -> None:
            self.sent.append(json.loads(text))

        async def close(self, code: int, reason: str) -> None:
            self.closed = code

    streams = LiveStreams(SimpleNamespace(api_key="a-real-key-0123456789"))
    for key in (12345, ["a-real-key-0123456789"], {"k": 1}):
        ws = Socket({"key": key})
        assert asyncio.run(streams.hello(ws)) is None
        assert ws.closed == CLOSE_UNAUTHORIZED and ws.sent[-1]["error"] == "unauthorized", (key, ws.sent)


def test_item_15_one_failing_group_fails_only_its_own_callers():
    from facemask.serving.inference import Inference

    class Model:
        def __init__(self, fails: bool) -> None:
            self.fails = fails

        def predict(self, images, *params):
            if self.fails:
                raise RuntimeError("this version's weights are broken")
            return [["found"] for _ in images]

    args = SimpleNamespace(max_body_mb=1, decode_budget_mp=10, max_batch_size=8, batch_wait_timeout_s=0.05)
    good, broken = Model(False), Model(True)
    params = (0.25, 0.7, 640, 100)

    async def main():
        inference = Inference(args, "pt")
        calls = [inference.batcher.submit((m, "image", params, 0.0)) for m in (good, broken, good)]
        return await asyncio.gather(*calls, return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert isinstance(second, RuntimeError), second
    assert first["detections"] == ["found"] and third["detections"] == ["found"], (first, third)
