"""Clips per event: the ring buffer, the recording around an alert, the blur on every frame,
and the bounds on memory, queue and disk (facemask/events/clips.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from facemask.core.errors import ConfigError
from facemask.events.clips import MAX_RECORDINGS, ClipRecorder
from facemask.events.evidence import EvidenceStore
from facemask.events.rules import Clip
from tests.images import sharpness, video_frames
from tests.services import wait_until
from tests.unit.events.test_events import events_of

FACES = [{"x1": 40, "y1": 60, "x2": 200, "y2": 260}, {"x1": 360, "y1": 80, "x2": 520, "y2": 280}]


def frame(seed: int) -> np.ndarray:
    """A 640 x 360 frame with detail everywhere (as a face has), different each time."""
    return np.random.default_rng(seed).integers(0, 255, (360, 640, 3), dtype=np.uint8)


def inner(box: dict, scale: float = 1.0, margin: int = 6) -> tuple[slice, slice]:
    """A box's pixels, scaled, less a margin (the subject's outline sits on its edge)."""
    return (
        slice(int(box["y1"] * scale) + margin, int(box["y2"] * scale) - margin),
        slice(int(box["x1"] * scale) + margin, int(box["x2"] * scale) - margin),
    )


def record(tmp_path: Path, blur: str, settings: Clip, seconds: float = 4.0, alert_at: float = 2.0):
    """Frames at 8 a second for `seconds`, an alert for track 1 (the first face) at `alert_at`;
    returns the recorder (closed) and the frames offered, by time."""
    recorder = ClipRecorder(settings, EvidenceStore(tmp_path / "events", 1e9, 1e6))
    offered, now = {}, time.time()  # capture times are wall-clock times, as a camera's are
    for i in range(int(seconds * 8)):
        at = now + i / 8
        offered[at] = frame(i)
        recorder.offer("door", at, offered[at], lambda image: image, FACES, {1: FACES[0], 2: FACES[1]})
        if i / 8 == alert_at:
            recorder.start("door", "door-ev1", 1, at, blur)
    drain(recorder)  # a stop passes over the frames still queued: these are all taken first
    recorder.close(timeout_s=30)
    return recorder, offered


def drain(recorder: ClipRecorder, at: float | None = None) -> None:
    """Wait until the clip thread has taken everything queued so far (a last frame of its own)."""
    drained = threading.Event()
    at = time.time() if at is None else at
    recorder.queue.put(("frame", "drain", at, None, lambda _: drained.set() or frame(0), [], {}))
    assert drained.wait(30)


def test_a_clip_runs_from_before_the_alert_to_after_it_with_every_face_blurred(tmp_path):
    settings = Clip(before_s=1.0, after_s=1.0, fps=4, width=320)
    recorder, offered = record(tmp_path, "all", settings)
    path = tmp_path / "events" / "door" / "door-ev1.webm"
    assert path.is_file() and not list(path.parent.glob("*.part.webm"))
    frames = video_frames(path)
    # 4 a second from 1 s before the alert to 1 s after it: the ends included, 9 frames.
    assert len(frames) == 9 and frames[0].shape == (180, 320, 3)  # shrunk to the width, both sides even
    assert recorder.summary() == {"written": 1, "skipped": 0, "frames_dropped": 0, "errors": 0, "recording": 0}
    scale = 0.5
    original = np.mean([sharpness(image[inner(FACES[0])]) for image in offered.values()])
    for image in frames:  # lossy VP8 keeps some edges; a face's detail is gone
        for box in FACES:
            assert sharpness(image[inner(box, scale)]) < 0.05 * original
    # Nowhere else is touched: the background keeps its detail, so the clip is not just blank.
    assert sharpness(frames[4][140:178, 100:300]) > 0.1 * original


def test_others_keeps_the_subjects_face_and_outlines_it(tmp_path):
    recorder, offered = record(tmp_path, "others", Clip(before_s=0.5, after_s=0.5, fps=4, width=640))
    frames = video_frames(tmp_path / "events" / "door" / "door-ev1.webm")
    assert len(frames) == 5
    original = np.mean([sharpness(image[inner(FACES[0])]) for image in offered.values()])
    for image in frames:
        assert sharpness(image[inner(FACES[0])]) > 0.2 * original  # the subject, for review
        assert sharpness(image[inner(FACES[1])]) < 0.05 * original
        top = image[FACES[0]["y1"], FACES[0]["x1"] + 20 : FACES[0]["x2"] - 20]
        assert np.all(np.abs(top.astype(int) - (255, 64, 64)).mean(axis=1) < 60)  # the outline


def test_memory_is_bounded_by_the_buffer_and_the_recordings_and_extra_alerts_are_counted(tmp_path):
    settings = Clip(before_s=1.0, after_s=30.0, fps=4, width=160)
    recorder = ClipRecorder(settings, EvidenceStore(tmp_path, 1e9, 1e6))
    now = time.time()
    for i in range(40):
        at = now + i / 4
        recorder.offer("door", at, frame(i), lambda image: image, [], {})
        if i >= 20 and i - 20 <= MAX_RECORDINGS:  # one alert too many
            recorder.start("door", f"ev{i}", 1, at, "all")
    drain(recorder, now + 11)
    assert len(recorder.rings["door"]) == recorder.ring_length == 5  # 1 s at 4 fps, and the frame at its start
    assert len(recorder.recordings) == MAX_RECORDINGS and recorder.summary()["skipped"] == 1
    recorder.close(timeout_s=30)  # a stop writes what the recordings hold
    assert len(list(tmp_path.glob("door/*.webm"))) == MAX_RECORDINGS and recorder.summary()["recording"] == 0


def test_a_full_queue_drops_frames_and_the_watch_never_waits(tmp_path):
    release = threading.Event()
    recorder = ClipRecorder(Clip(fps=15), EvidenceStore(tmp_path, 1e9, 1e6))

    def stuck(image):  # the clip thread is held on its first frame
        release.wait(30)
        return image

    for i in range(600):
        recorder.offer("door", 1000.0 + i, frame(0), stuck, [], {})
    assert recorder.summary()["frames_dropped"] == 600 - 1 - recorder.queue.maxsize
    release.set()
    recorder.close(timeout_s=30)
    assert recorder.summary()["errors"] == 0


def test_a_camera_that_falls_silent_gets_its_clip_while_others_still_send(tmp_path):
    recorder = ClipRecorder(Clip(before_s=1, after_s=1, fps=4, width=160), EvidenceStore(tmp_path, 1e9, 1e6))
    then = time.time() - 60  # the door camera's last frames, a minute ago: it died after its alert
    for i in range(5):
        recorder.offer("door", then + i / 4, frame(i), lambda image: image, [], {})
    recorder.start("door", "door-ev1", 1, then + 1, "all")
    clip = tmp_path / "door" / "door-ev1.webm"
    wait_until(
        lambda: recorder.offer("hall", time.time(), frame(9), lambda image: image, [], {}) or clip.is_file(),
        30,
        "the silent camera's clip written, as the other camera's frames go on",
    )
    assert len(video_frames(clip)) == 5 and recorder.summary()["recording"] == 0
    recorder.close()


def test_frames_closer_than_the_clip_rate_are_not_even_queued(tmp_path):
    recorder = ClipRecorder(Clip(fps=2), EvidenceStore(tmp_path, 1e9, 1e6))
    recorder.close()  # the thread is gone: what is offered stays in the queue, to be counted
    for i in range(30):  # 15 fps for 2 s
        recorder.offer("door", 1000.0 + i / 15, None, lambda image: image, [], {})
    assert recorder.queue.qsize() == 4


def test_clips_share_the_evidence_limits_and_a_clip_being_written_is_left_alone(tmp_path):
    store = EvidenceStore(tmp_path, max_bytes=2500, max_age_s=3600)
    (tmp_path / "door").mkdir()
    (tmp_path / "door" / "old.webm").write_bytes(bytes(2000))
    (tmp_path / "door" / "new.part.webm").write_bytes(bytes(2000))
    store.write("door", "snap", bytes(1000))
    assert sorted(p.name for p in (tmp_path / "door").iterdir()) == ["new.part.webm", "snap.jpg"]


@pytest.mark.parametrize(
    "clip, says",
    [
        ({"fps": 0}, "events.clip.fps 0: must be a number, [1, 15]"),
        ({"before_s": 60}, "events.clip.before_s 60"),
        ({"width": 100}, "events.clip.width 100"),
        ({"seconds": 4}, "events.clip: unknown field 'seconds'"),
    ],
)
def test_a_bad_clip_setting_is_refused_naming_the_field(tmp_path, clip, says):
    with pytest.raises(ConfigError, match="cameras.yaml: events.clip") as caught:
        events_of(tmp_path, {"clip": clip})
    assert says in str(caught.value)


def test_clips_are_off_unless_asked_for_and_an_empty_mapping_takes_the_defaults(tmp_path):
    assert events_of(tmp_path, {}).clip is None
    assert events_of(tmp_path, {"clip": {}}).clip == Clip() == Clip(before_s=4, after_s=4, fps=4, width=640)
    assert events_of(tmp_path, {"clip": {"after_s": 2}}).clip == Clip(after_s=2)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread priorities are read from Linux's /proc")
def test_the_clip_thread_runs_at_the_lowest_priority_and_the_watchs_thread_keeps_its_own(tmp_path):
    import os

    recorder = ClipRecorder(Clip(), EvidenceStore(tmp_path, 1e9, 1e6))
    drain(recorder)  # the thread has started and lowered itself

    def nice(tid: int) -> int:
        return int(Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])

    assert nice(recorder.thread.native_id) == 19 and nice(threading.get_native_id()) == os.nice(0)
    recorder.close()


def test_a_stop_waits_for_clips_only_briefly_and_a_cut_short_clip_leaves_no_file_behind(tmp_path):
    (tmp_path / "door").mkdir()
    (tmp_path / "door" / "door-old.part.webm").write_bytes(b"cut short by a kill")
    recorder = ClipRecorder(Clip(fps=15), EvidenceStore(tmp_path, 1e9, 1e6))
    assert not list(tmp_path.glob("door/*.part.webm"))  # removed at the start
    release = threading.Event()
    recorder.offer("door", time.time(), None, lambda _: release.wait(30) and frame(0), [], {})
    for i in range(1, 50):  # a backlog behind the stuck frame
        recorder.offer("door", time.time() + i, frame(i), lambda image: image, [], {})
    began = time.monotonic()
    recorder.close(timeout_s=0.5)  # the watch's rows and summary wait on this
    assert time.monotonic() - began < 2.0
    release.set()
    recorder.thread.join(30)  # it passes over the backlog instead of fetching it
    assert not recorder.thread.is_alive()
