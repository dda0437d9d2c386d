"""`facemask watch` on real streams on loopback: H.264 over RTSP from GStreamer's RTSP server,
MJPEG over HTTP and a looped video file, read by Ray actors, batched into one detector (the
simulated GPU: the model is not what is tested here), tracked and counted per camera; a stream
killed and brought back; cameras added and removed while it runs; the grid page in real
Chromium; SIGTERM and `ray job stop` end it within seconds with every camera's rows written."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from facemask.core.classes import CLASS_NAMES
from tests.services import API_KEY, CHROMIUM, free_port, launch_chromium, wait_until
from tests.streams import MjpegServer, RtspServer, jpeg_frames, make_video, rtsp_missing, write_frames

pytestmark = [
    pytest.mark.integration,
    pytest.mark.whole_machine(
        reason="each camera's decoded frames are held to its frame rate; a restarted stream is back within 15 s"
    ),
]
ROOT = Path(__file__).resolve().parents[3]
FACEMASK = [sys.executable, "-m", "facemask.cli"]
STOP_WITHIN_S = 30
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def watch_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def cameras(url: str) -> dict[str, dict]:
    return {c["id"]: c for c in httpx.get(url + "cameras", headers=AUTH, timeout=10).json()["cameras"]}


def all_live(url: str, ids: set[str], frames: int = 10):
    found = cameras(url)
    return (
        found
        if set(found) == ids and all(found[i]["state"] == "live" and found[i]["processed"] >= frames for i in ids)
        else None
    )


@pytest.fixture()
def streams(tmp_path):
    why = rtsp_missing()
    if why:
        pytest.skip(why)
    rtsp = RtspServer(write_frames(tmp_path / "frames", 640, 360, 30), tmp_path / "rtsp.log").start()
    mjpeg = MjpegServer(jpeg_frames(320, 240, 30, seed=1), fps=10)
    video = make_video(tmp_path / "hall.mkv", 320, 240, fps=15, seconds=4, seed=2)
    yield {"rtsp": rtsp, "mjpeg": mjpeg, "video": video}
    rtsp.stop()
    mjpeg.stop()


def test_watch_reads_rtsp_mjpeg_and_a_file_and_survives_a_dead_stream(streams, tmp_path):
    listing = tmp_path / "cameras.yaml"
    entries = [
        {"id": "door", "url": streams["rtsp"].url, "fps": 15},
        {"id": "hall", "url": streams["mjpeg"].url, "zone": [0.0, 0.0, 0.4, 1.0]},
        {"id": "lobby", "url": "hall.mkv"},
    ]
    listing.write_text(yaml.safe_dump({"cameras": entries}))
    out, port = tmp_path / "out", free_port()
    command = [*FACEMASK, "watch", str(listing), "--out", str(out), "--backend", "simulated-gpu", "--window-s", "4"]
    command += ["--api-sources", "rtsp,http,file"]  # the test adds a video file over the API
    log = tmp_path / "watch.log"
    proc = subprocess.Popen(
        [*command, "--port", str(port)],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        env=watch_env(FACEMASK_API_KEY=API_KEY),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: _answers(url), 120, "the watch's page", proc=proc, log=log)
        assert httpx.get(url + "cameras", timeout=10).status_code == 401  # the key is required
        wait_until(lambda: all_live(url, {"door", "hall", "lobby"}), 90, "three live cameras", proc=proc, log=log)
        restart_a_dead_stream(url, streams["rtsp"], proc, log)
        add_and_remove_cameras(url, listing, entries, proc, log)
        check_the_page(url, tmp_path)
        check_the_metrics(log, proc)
    finally:
        code, seconds = stop(proc)
    print(f"SIGTERM: exit {code} {seconds:.1f} s after the signal")  # docs/cameras.md
    assert code == 143 and seconds < STOP_WITHIN_S, (code, seconds, log.read_text()[-3000:])
    assert "stopped by SIGTERM: facemask watch:" in log.read_text()
    rows = [json.loads(line) for line in (out / "compliance.jsonl").read_text().splitlines()]
    by_camera = {r["camera"] for r in rows}
    assert {"door", "hall", "lobby"} <= by_camera, by_camera
    full = [r for r in rows if not r["partial"] and r["camera"] in ("door", "lobby") and r["processed"] >= 10]
    # The simulated model sees one face of each class on every frame: 3 people, a third masked.
    assert full and all(r["people"] == 3 and r["compliance"] == pytest.approx(1 / 3, abs=1e-3) for r in full), full
    # A window the camera was down for counts nobody, and has no share rather than 0%.
    assert all(r["compliance"] is None for r in rows if r["processed"] == 0 and r["people"] == 0)
    hall = [r for r in rows if r["camera"] == "hall" and not r["partial"] and r["processed"] >= 10]
    assert hall and all(r["people"] == 1 for r in hall), hall  # the zone holds only the left face
    assert all(set(r["by_class"]) == set(CLASS_NAMES) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM" and summary["cameras"]["door"]["reconnects"] >= 1
    # From capture to detections: a frame, not a backlog (an MJPEG stream's invented timestamps once made it grow).
    assert all(c["latency_ms"]["p50"] < 500 for c in summary["cameras"].values()), summary["cameras"]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def restart_a_dead_stream(url: str, rtsp: RtspServer, proc, log) -> None:
    """Kill the RTSP server (no teardown, as a camera losing power), bring it back after 4 s:
    its reader is back within seconds, and the other cameras read every frame meanwhile."""
    before = cameras(url)
    killed = time.monotonic()
    rtsp.stop()
    wait_until(lambda: cameras(url)["door"]["state"] != "live", 30, "the dead stream noticed", proc=proc, log=log)
    time.sleep(max(0.0, 4 - (time.monotonic() - killed)))
    restarted = time.monotonic()
    rtsp.start()
    wait_until(
        lambda: (c := cameras(url)["door"])["state"] == "live" and c["reconnects"] >= 1,
        30,
        "the stream back",
        proc=proc,
    )
    back_s = time.monotonic() - restarted
    after, outage = cameras(url), time.monotonic() - killed
    print(f"the RTSP camera was read again {back_s:.1f} s after its server came back")  # docs/cameras.md
    assert back_s < 15, back_s
    for other, fps in (("hall", 10), ("lobby", 15)):
        decoded = after[other]["decoded"] - before[other]["decoded"]
        skipped = after[other]["skipped_behind"] - before[other]["skipped_behind"]
        print(
            f"{other}: {decoded} frames read in the {outage:.1f} s outage ({fps * outage:.0f} sent), {skipped} skipped"
        )
        # Every frame still read (a second's worth of slack for a loaded machine; here none was skipped).
        assert decoded >= 0.85 * fps * outage and skipped <= fps, (other, decoded, skipped, outage)
        assert after[other]["reconnects"] == before[other]["reconnects"] and after[other]["state"] == "live"
        assert after[other]["processed"] - before[other]["processed"] >= 0.6 * fps * outage


def add_and_remove_cameras(url: str, listing: Path, entries: list[dict], proc, log) -> None:
    """POST adds a camera, DELETE removes it; an edited list adds and removes too; a broken one changes nothing."""
    bad = httpx.post(url + "cameras", json={"id": "x", "url": "cam.mkv", "fps": -1}, headers=AUTH, timeout=10)
    assert bad.status_code == 400 and "field `fps`" in bad.json()["message"], bad.text
    added = httpx.post(url + "cameras", json={"id": "extra", "url": entries[2]["url"]}, headers=AUTH, timeout=10)
    assert added.status_code == 400 and "hall.mkv" in added.json()["message"]  # relative to the server, not the list
    body = {"id": "extra", "url": str(listing.parent / "hall.mkv")}
    assert httpx.post(url + "cameras", json=body, headers=AUTH, timeout=10).status_code == 201
    wait_until(lambda: cameras(url).get("extra", {}).get("processed", 0) > 3, 30, "the added camera", proc=proc)
    assert httpx.delete(url + "cameras/extra", headers=AUTH, timeout=10).status_code == 200
    assert "extra" not in cameras(url)
    assert httpx.delete(url + "cameras/extra", headers=AUTH, timeout=10).status_code == 404

    listing.write_text(yaml.safe_dump({"cameras": [entries[0], entries[2], {"id": "side", "url": "hall.mkv"}]}))
    wait_until(lambda: set(cameras(url)) == {"door", "lobby", "side"}, 20, "the edited list applied", proc=proc)
    listing.write_text("cameras:\n  - id: door\n    url: [not a url]\n")
    time.sleep(2.5)
    assert set(cameras(url)) == {"door", "lobby", "side"}
    assert "field `url`" in log.read_text() or "url" in log.read_text()
    listing.write_text(yaml.safe_dump({"cameras": entries}))
    wait_until(lambda: all_live(url, {"door", "hall", "lobby"}, frames=1), 30, "the list restored", proc=proc)


def check_the_metrics(log: Path, proc) -> None:
    """The metrics the watch prints it exports: frames per camera, and compliance under the names /live uses."""
    endpoint = re.search(r"metrics for Prometheus: (\S+)", log.read_text()).group(1).rstrip(",")

    def scraped() -> str | None:
        text = httpx.get(endpoint, timeout=10).text
        wanted = ("ray_facemask_camera_frames_total{", "ray_facemask_live_compliance_ratio{", 'camera="lobby"')
        return text if all(w in text for w in wanted) else None

    text = wait_until(scraped, 60, "the watch's metrics", proc=proc)
    frames = [line for line in text.splitlines() if line.startswith("ray_facemask_camera_frames_total{")]
    assert any(
        'camera="lobby"' in line and 'outcome="processed"' in line and float(line.split()[-1]) > 0 for line in frames
    )
    compliance = [line for line in text.splitlines() if line.startswith("ray_facemask_live_compliance_ratio{")]
    assert any('stream="lobby"' in line and abs(float(line.split()[-1]) - 1 / 3) < 1e-3 for line in compliance), (
        compliance
    )


def check_the_page(url: str, tmp_path: Path) -> None:
    """The grid in Chromium: a tile per camera with its frame and boxes, labels that never overlap,
    even for a crowd; a screenshot for the docs when FACEMASK_CAMERAS_PNG names a file."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian's chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.fill("#key", API_KEY)
        page.dispatch_event("#key", "change")
        page.wait_for_function(
            "() => ['door','hall','lobby'].every((id) => (window.lastDrawnByCamera[id] || []).length > 0)",
            timeout=30000,
        )
        tiles = page.locator(".tile").count()
        drawn = page.evaluate("() => window.lastDrawnByCamera")
        crowd = page.evaluate(
            """() => {
            const faces = Array.from({length: 16}, (_, i) => ({box: {x1: 20 + i * 38, y1: 4, x2: 52 + i * 38, y2: 40},
                confidence: 0.5 + i / 40, label: 'mask_weared_incorrect', track_id: 100 + i}));
            return placeLabels(faces, () => 120, 18, 640, 360);
        }"""
        )
        text = page.inner_text("#summary")
        page.wait_for_timeout(500)
        page.screenshot(path=os.environ.get("FACEMASK_CAMERAS_PNG") or str(tmp_path / "cameras.png"), full_page=True)
        browser.close()
    assert tiles == 3 and "3 of 3 cameras live" in text, (tiles, text)
    for camera, boxes in drawn.items():
        assert_apart([b["label"] for b in boxes], camera)
    assert_apart(crowd, "a crowd of 16")
    assert all(0 <= r["x"] and r["x"] + r["w"] <= 640 and 0 <= r["y"] and r["y"] + r["h"] <= 360 for r in crowd)


def assert_apart(rects: list[dict], what: str) -> None:
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            w = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            h = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            assert w <= 0.5 or h <= 0.5, (what, a, b)


def stop(proc) -> tuple[int, float]:
    started = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=STOP_WITHIN_S + 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = -9
    return code, time.monotonic() - started


def test_watch_as_a_ray_job_stops_with_ray_job_stop(tmp_path):
    """jobs/watch.py submitted to a `ray start` cluster: readers and detector are the cluster's
    actors; `ray job stop` as documented (its default 3 s before SIGKILL) ends it with every
    camera's partial window and summary.json written (issue item 12: the stop writes them first)."""
    if rtsp_missing():
        pytest.skip(rtsp_missing())
    from tests.services import RayCluster

    make_video(tmp_path / "a.mkv", 320, 240, fps=15, seconds=3)
    listing = tmp_path / "cameras.yaml"
    listing.write_text(yaml.safe_dump({"cameras": [{"id": "a", "url": "a.mkv"}, {"id": "b", "url": "a.mkv"}]}))
    cluster = RayCluster(
        Path(tempfile.mkdtemp(prefix="fm-ray-", dir="/tmp")),
        {**watch_env(RAY_AUTH_MODE="token"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    out = tmp_path / "out"
    args = ["python", str(ROOT / "jobs" / "watch.py"), str(listing), "--out", str(out), "--backend", "simulated-gpu"]
    try:
        cluster.start_head(num_cpus=2)
        run = cluster.submit("--no-wait", "--", *args, "--no-page", "--window-s", "3")
        job_id = re.search(r"raysubmit_[A-Za-z0-9]+", run.stdout + run.stderr).group(0)
        wait_until(lambda: (out / "compliance.jsonl").is_file(), 120, "the first compliance rows")
        started = time.monotonic()
        stopped = cluster.job("stop", job_id)
        seconds = time.monotonic() - started
        assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
        logs = cluster.job("logs", job_id).stdout
    finally:
        cluster.stop()
    print(f"ray job stop: returned {seconds:.1f} s after it was run")  # docs/cameras.md
    assert seconds < STOP_WITHIN_S + 5, seconds
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM", (summary, logs[-3000:])
    rows = [json.loads(line) for line in (out / "compliance.jsonl").read_text().splitlines()]
    assert {r["camera"] for r in rows if r["partial"]} == {"a", "b"}, rows
    assert all(r["people"] == 3 for r in rows if not r["partial"])
