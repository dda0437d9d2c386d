"""`facemask watch`'s pure parts: the camera list and its errors, zones, compliance windows over
the real tracker, URL redaction, and the YUV path from a decoded frame to the model's RGB."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from facemask.cli import main
from facemask.core.errors import ConfigError, InputNotFoundError
from facemask.video.watch.cameras import Camera, check_sources, load_cameras
from facemask.video.watch.compliance import CameraCompliance, in_zone
from facemask.video.watch.urls import redacted


def listing(tmp_path, cameras) -> object:
    path = tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump({"cameras": cameras}))
    return path


def test_a_camera_list_reads_every_field(tmp_path):
    (tmp_path / "hall.mkv").write_bytes(b"")
    path = listing(
        tmp_path,
        [
            {"id": "door", "url": "rtsp://user:pw@10.0.0.5/s1", "fps": 15, "zone": [0, 0.2, 1, 1], "transport": "udp"},
            {"id": "hall", "url": "hall.mkv"},
            {"id": "desk", "url": 0},
        ],
    )
    cameras = check_sources(load_cameras(path), tmp_path)
    assert cameras[0] == Camera("door", "rtsp://user:pw@10.0.0.5/s1", 15.0, (0.0, 0.2, 1.0, 1.0), "udp")
    assert cameras[1].url == str((tmp_path / "hall.mkv").resolve()) and cameras[1].is_file
    assert cameras[2].url == "0" and not cameras[2].is_file


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"url": "rtsp://x"}, "field `id`"),
        ({"id": "a b", "url": "rtsp://x"}, "field `id`"),
        ({"id": "a"}, "field `url` is missing"),
        ({"id": "a", "url": "rtsp://x", "fps": 0}, "field `fps`"),
        ({"id": "a", "url": "rtsp://x", "fps": "fast"}, "field `fps`"),
        ({"id": "a", "url": "rtsp://x", "zone": [0.5, 0, 0.2, 1]}, "field `zone`"),
        ({"id": "a", "url": "rtsp://x", "zone": [0, 0, 1]}, "field `zone`"),
        ({"id": "a", "url": "rtsp://x", "transport": "quic"}, "field `transport`"),
        ({"id": "a", "url": "rtsp://x", "fsp": 15}, "unknown field 'fsp'"),
    ],
)
def test_a_bad_camera_is_named_with_its_field_and_the_file(tmp_path, entry, says):
    path = listing(tmp_path, [{"id": "ok", "url": "rtsp://y"}, entry])
    with pytest.raises(ConfigError) as caught:
        load_cameras(path)
    assert str(path) in str(caught.value) and "cameras[1]" in str(caught.value) and says in str(caught.value)


def test_duplicate_ids_a_missing_file_and_a_non_list_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="listed twice"):
        load_cameras(listing(tmp_path, [{"id": "a", "url": "rtsp://x"}, {"id": "a", "url": "rtsp://y"}]))
    with pytest.raises(InputNotFoundError, match="looked for"):
        check_sources(load_cameras(listing(tmp_path, [{"id": "a", "url": "gone.mkv"}])), tmp_path)
    (tmp_path / "flat.yaml").write_text("- id: a\n")
    with pytest.raises(ConfigError, match="`cameras:` list"):
        load_cameras(tmp_path / "flat.yaml")
    with pytest.raises(InputNotFoundError, match="no such camera list"):
        load_cameras(tmp_path / "absent.yaml")


def test_the_cli_reports_a_bad_list_in_one_line_before_starting_anything(tmp_path):
    path = listing(tmp_path, [{"id": "a", "url": "rtsp://x", "fps": -3}])
    result = CliRunner().invoke(main, ["watch", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "field `fps`" in result.output and str(path) in result.output
    assert not (tmp_path / "out").exists()


def face(x1, y1, x2, y2, label="with_mask", conf=0.9) -> dict:
    return {"box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}, "confidence": conf, "label": label}


def test_a_zone_keeps_the_faces_centred_inside_it():
    assert in_zone(face(10, 10, 30, 30), None, 100, 100)
    assert in_zone(face(10, 10, 30, 30), (0.0, 0.0, 0.5, 1.0), 100, 100)
    assert not in_zone(face(60, 10, 80, 30), (0.0, 0.0, 0.5, 1.0), 100, 100)


def test_a_window_counts_each_person_once_and_forgets_people_gone_for_two_windows():
    compliance = CameraCompliance("door", window_s=10, keep_windows=3, frame_rate=15, show_conf=0.25)
    masked, bare = face(10, 10, 40, 40), face(100, 10, 130, 40, "without_mask")
    for _ in range(20):  # two people in view for 20 frames: each counted once
        compliance.update([masked, bare], None, 200, 100)
    row = compliance.close(compliance.start + 10)
    assert row["people"] == 2 and row["by_class"]["with_mask"] == 1 and row["by_class"]["without_mask"] == 1
    assert row["compliance"] == 0.5 and len(compliance.history) == 1
    empty = compliance.close(compliance.start + 10)  # nobody in view: no share, not 0%
    assert empty["people"] == 0 and empty["compliance"] is None
    assert compliance.tracker.people  # seen a window ago: still remembered
    compliance.close(compliance.start + 10)
    assert not compliance.tracker.people  # two windows unseen: forgotten
    assert len(compliance.history) == 3


def test_a_passing_false_positive_is_not_a_person():
    compliance = CameraCompliance("door", window_s=10, keep_windows=1, frame_rate=15, show_conf=0.25)
    compliance.update([face(10, 10, 40, 40)], None, 200, 100)  # one frame: not a confirmed track
    for _ in range(5):
        compliance.update([], None, 200, 100)
    assert compliance.close(compliance.start + 10)["people"] == 0


def test_a_camera_password_never_reaches_the_page():
    assert redacted("rtsp://admin:hunter2@10.0.0.5:554/s1") == "rtsp://admin:***@10.0.0.5:554/s1"
    assert redacted("http://cam/video.mjpg") == "http://cam/video.mjpg"


def test_a_decoded_yuv_frame_reaches_the_model_in_rgb_at_its_size():
    av = pytest.importorskip("av")
    import cv2

    from facemask.video.watch.decode import AvStream

    rng = np.random.default_rng(0)
    rgb = cv2.resize(rng.integers(0, 255, (18, 32, 3), dtype=np.uint8), (1280, 720), interpolation=cv2.INTER_CUBIC)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    shrunk = AvStream.to_rgb(frame, 640, 360)
    want = cv2.resize(rgb, (640, 360), interpolation=cv2.INTER_LINEAR)
    assert shrunk.shape == (360, 640, 3) and shrunk.dtype == np.uint8
    # YUV 4:2:0 halves the colour resolution; on smooth content the difference stays small.
    assert np.abs(shrunk.astype(int) - want.astype(int)).mean() < 4


def test_the_stream_clock_knows_a_burst_from_a_reader_falling_behind(monkeypatch):
    from facemask.video.watch import reader

    now = [1000.0]
    monkeypatch.setattr(reader.time, "time", lambda: now[0])
    clock = reader.StreamClock(period=1 / 15, live=True)
    for i in range(10):  # ten frames buffered at connection arrive at once: not behind
        clock.due(i / 15)
    assert clock.behind_s == pytest.approx(0.0, abs=1e-9)
    now[0] += 2.0  # the next frame, stamped 10/15 s, is read 2 s later: 1.33 s behind
    clock.due(10 / 15)
    assert clock.behind_s == pytest.approx(2.0 - 10 / 15 + 9 / 15, abs=1e-6) and clock.skipped == 0
    clock.due(25 / 15)  # keyframes only: the decoder skipped 14 frames
    assert clock.skipped == 14


def test_a_file_is_due_at_its_own_rate_whenever_it_is_read(monkeypatch):
    from facemask.video.watch import reader

    now = [50.0]
    monkeypatch.setattr(reader.time, "time", lambda: now[0])
    clock = reader.StreamClock(period=0.1, live=False)
    assert clock.due(0.0) == 50.0
    assert clock.due(0.1) == pytest.approx(50.1)  # read early: due later (the reader waits)
    now[0] = 51.0
    assert clock.due(0.2) == pytest.approx(50.2) and clock.behind_s == pytest.approx(0.8)
    no_rate = reader.StreamClock(period=0.0, live=True)
    assert no_rate.due(None) == 51.0 and no_rate.behind_s == 0.0


@pytest.mark.parametrize("per_reader", [0, -2])
def test_a_reader_process_reads_at_least_one_camera(tmp_path, per_reader):
    from facemask.core.errors import ConfigError
    from facemask.core.settings import WatchConfig

    cfg = WatchConfig(cameras=tmp_path / "c.yaml", out=tmp_path, cameras_per_reader=per_reader, tracking_uri="")
    with pytest.raises(ConfigError, match=f"--cameras-per-reader {per_reader}: must be at least 1"):
        cfg.validate()
