"""Live video over real HTTP: the /live WebSocket on real Serve, the page's camera mode in real
Chromium with a fake camera, and `facemask predict` on an MJPEG stream served on loopback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from PIL import Image

from facemask.core.classes import CLASS_NAMES
from tests import services
from tests.services import API_KEY, CHROMIUM, LIMITS, free_port
from tests.streams import MjpegServer

pytestmark = pytest.mark.integration
# `facemask` as a process of its own, from this interpreter.
FACEMASK = [sys.executable, "-c", "from facemask.cli import main; main()"]


def ws_url(endpoint, path: str = "/live") -> str:
    return endpoint["url"].replace("http://", "ws://") + path


def receive(ws, timeout: float = 60) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def streams(endpoint) -> dict:
    return httpx.get(endpoint["url"] + "/live/streams", timeout=30).json()


def test_live_stream_answers_every_frame_with_tracked_detections_and_survives_bad_input(endpoint, known_image):
    from websockets.sync.client import connect

    frame = known_image.read_bytes()
    with connect(ws_url(endpoint)) as ws:
        ws.send(json.dumps({"conf": 0, "imgsz": 160, "max_det": 3, "fps": 120}))
        ready = receive(ws)
        assert ready["type"] == "ready" and ready["settings"]["imgsz"] == 160 and ready["model"]["version"]
        for i in range(4):
            ws.send(frame)
            answer = receive(ws)
            assert answer["type"] == "result" and answer["frame"] == i, answer
            # max_det 3, less the boxes that fall on one face (one box per face in a stream)
            assert 1 <= len(answer["detections"]) <= 3 and all("track_id" in d for d in answer["detections"])
            assert sum(answer["counts"].values()) == len(answer["detections"])
            assert set(answer["people"]["by_class"]) == set(CLASS_NAMES) and answer["people"]["frames"] == i + 1
            assert answer["timings"]["inference_ms"] > 0 and answer["stream"]["processed"] == i + 1
        assert streams(endpoint)["open"] == 1
        ws.send(b"this is not an image")
        error = receive(ws)
        assert (error["type"], error["error"], error["frame"]) == ("error", "not_an_image", 4), error
        ws.send(b"")
        assert receive(ws)["error"] == "empty_body"
        ws.send(json.dumps({"imgsz": 99999}))
        error = receive(ws)
        assert error["error"] == "invalid_parameter" and "imgsz" in error["message"]
        ws.send(frame)  # the stream is still up, with its settings unchanged
        answer = receive(ws)
        assert answer["type"] == "result" and answer["frame"] == 6 and len(answer["detections"]) >= 1
    # Closing the stream frees its tracker.
    deadline = time.monotonic() + 20
    freed = {"open": 0, "trackers": 0, "dropped": 0, "waiting_hello": 0, "evicted": 0}
    while (now := streams(endpoint)) != freed and time.monotonic() < deadline:
        time.sleep(0.5)
    assert now == freed


def test_live_stream_refuses_a_wrong_key_and_a_bad_hello_with_a_reason(endpoint):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    for hello, error, code in [({"key": "wrong"}, "unauthorized", 4401), ({}, "unauthorized", 4401)]:
        with connect(ws_url(endpoint, "/secured/live")) as ws:
            ws.send(json.dumps(hello))
            answer = receive(ws)
            assert (answer["type"], answer["error"]) == ("error", error) and "key" in answer["message"]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == code
    with connect(ws_url(endpoint, "/secured/live")) as ws:
        ws.send("not json")
        assert receive(ws)["error"] == "bad_hello"
    with connect(ws_url(endpoint, "/secured/live")) as ws:
        ws.send(json.dumps({"key": API_KEY, "conf": 0.5}))
        assert receive(ws)["type"] == "ready"
    assert httpx.get(endpoint["url"] + "/secured/live/streams", timeout=30).status_code == 401


def sampled(folder) -> list[dict]:
    """The sidecars the endpoint's pool wrote under `folder`, each with its image's size read back."""
    out = []
    for sidecar in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        meta = json.loads(sidecar.read_text())
        with Image.open(sidecar.with_suffix(".jpg")) as image:
            meta["jpeg_size"] = image.size
        out.append(meta)
    return out


def test_the_endpoint_keeps_answered_images_for_labelling_from_predict_and_live(endpoint, known_image):
    """The /secured app samples every answered image (random_share 1, faces blurred): each /predict
    and each /live frame becomes an image in the pool with the model's version and its boxes as
    pre-labels, in the kept image's pixels; live people carry no track ids into the sidecar."""
    from websockets.sync.client import connect

    frame, auth = known_image.read_bytes(), {"Authorization": f"Bearer {API_KEY}"}
    before = len(sampled(endpoint["samples"] / "predict"))
    for _ in range(3):
        response = httpx.post(
            endpoint["url"] + "/secured/predict", params={"conf": 0, "max_det": 5}, content=frame, headers=auth
        )
        assert response.status_code == 200, response.text
    with connect(ws_url(endpoint, "/secured/live")) as ws:
        ws.send(json.dumps({"key": API_KEY, "conf": 0, "max_det": 5, "fps": 120}))
        assert receive(ws)["type"] == "ready"
        for _ in range(2):
            ws.send(frame)
            assert receive(ws)["type"] == "result"
    services.wait_until(lambda: len(sampled(endpoint["samples"] / "predict")) == before + 3, 30, "3 /predict samples")
    services.wait_until(lambda: len(sampled(endpoint["samples"] / "live")) >= 2, 30, "2 /live samples")
    for meta in sampled(endpoint["samples"] / "predict")[before:] + sampled(endpoint["samples"] / "live"):
        assert meta["reasons"] == ["random"] and meta["faces"] == "blur", meta
        assert meta["model_version"] == endpoint["champion"] and meta["model_uri"].endswith("@champion"), meta
        assert (meta["width"], meta["height"]) == meta["jpeg_size"]
        assert 1 <= len(meta["detections"]) <= 5, meta
        for d in meta["detections"]:
            assert set(d) == {"label", "confidence", "box"} and d["label"] in CLASS_NAMES
            assert 0 <= d["box"]["x1"] < d["box"]["x2"] <= meta["width"] + 0.5, d
            assert 0 <= d["box"]["y1"] < d["box"]["y2"] <= meta["height"] + 0.5, d
    assert oct(endpoint["samples"].stat().st_mode & 0o777) == "0o700"  # the pool may hold faces


@pytest.mark.whole_machine(reason="the last frame's answer is held to a few model calls' time")
def test_a_burst_faster_than_the_model_gets_newest_frame_wins_not_a_queue(endpoint, known_image):
    """40 frames at 100/s, at imgsz 640 (several times slower than that): most are dropped and
    counted, the last one sent is answered, and soon after the burst: nothing was queued."""
    from websockets.sync.client import connect

    frame, sent = known_image.read_bytes(), 40
    with connect(ws_url(endpoint)) as ws:
        ws.send(json.dumps({"conf": 0, "imgsz": 640, "max_det": 3, "fps": 120}))
        assert receive(ws)["type"] == "ready"
        for _ in range(sent):
            ws.send(frame)
            time.sleep(0.01)
        burst_ended = time.monotonic()
        results = []
        while not results or results[-1]["frame"] != sent - 1:
            message = receive(ws)
            assert message["type"] == "result", message
            results.append(message)
        waited = time.monotonic() - burst_ended
    final = results[-1]["stream"]
    assert final["received"] == sent
    assert final["dropped"] > sent // 2, final
    assert len(results) + final["dropped"] + final["rate_limited"] == sent
    assert [r["frame"] for r in results] == sorted(r["frame"] for r in results)
    per_frame = max(r["timings"]["total_ms"] for r in results) / 1000
    assert waited < 3 * per_frame + 2, f"{waited:.1f}s to answer the last frame: frames were queued"
    print(
        f"burst: {sent} sent, {len(results)} answered, {final['dropped']} dropped, "
        f"{final['rate_limited']} over the fps limit; last answered {waited:.2f}s after the burst"
    )


@pytest.mark.whole_machine(reason="the burst must outrun the stream's frame rate within one second")
def test_frames_over_the_streams_fps_are_refused_after_a_one_second_burst(endpoint, known_image):
    """fps 5: a burst of 20 frames at once keeps the first 5 (a full bucket, so a new stream's
    first frames never draw an error), refuses the rest with one error, and counts them."""
    from websockets.sync.client import connect

    frame, burst = known_image.read_bytes(), 20
    with connect(ws_url(endpoint)) as ws:
        ws.send(json.dumps({"conf": 0, "imgsz": 160, "fps": 5}))
        assert receive(ws)["type"] == "ready"
        for _ in range(burst):
            ws.send(frame)
        # Settings are read after every frame sent before them: the answer counts the whole
        # burst and says when the bucket takes a frame again.
        ws.send(json.dumps({"fps": 5}))
        messages = [receive(ws)]
        while messages[-1]["type"] != "settings":
            messages.append(receive(ws))
        ack = messages.pop()
        assert ack["stream"]["received"] == burst and 0 <= ack["next_frame_in_s"] <= 1 / 5, ack
        time.sleep(ack["next_frame_in_s"])
        ws.send(frame)
        messages.append(receive(ws))
        while messages[-1]["type"] != "result" or messages[-1]["frame"] != burst:
            messages.append(receive(ws))
    errors = [m for m in messages if m["type"] == "error"]
    assert ack["stream"]["rate_limited"] == messages[-1]["stream"]["rate_limited"], (ack, messages[-1])
    assert [e["error"] for e in errors] == ["rate_limited"] and errors[0]["frame"] >= 5, errors
    stream = messages[-1]["stream"]
    # The server reads the burst over a few ms, in which a token may come back (one per 200 ms).
    assert burst // 2 <= stream["rate_limited"] <= burst - 5 and stream["received"] == burst + 1, stream
    kept = [m for m in messages[:-1] if m["type"] == "result"]
    assert 1 <= len(kept) <= burst - stream["rate_limited"], kept


def write_y4m(path, frames: list[Image.Image], fps: int = 15) -> None:
    """A YUV4MPEG2 (4:2:0) clip, the format Chromium's fake camera reads."""
    width, height = frames[0].size
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for image in frames:
            ycbcr = np.asarray(image.convert("YCbCr"), dtype=np.uint8)
            f.write(b"FRAME\n")
            f.write(ycbcr[:, :, 0].tobytes())
            for channel in (1, 2):
                plane = ycbcr[:, :, channel].reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
                f.write(plane.round().astype(np.uint8).tobytes())


def moving_clip(known_image, count: int = 30, size=(640, 480)) -> list[Image.Image]:
    """The known photo sliding across a grey frame."""
    with Image.open(known_image) as photo:
        photo = photo.convert("RGB")
        photo.thumbnail((size[0] // 2, size[1] // 2))
    frames = []
    for t in range(count):
        frame = Image.new("RGB", size, (120, 120, 120))
        frame.paste(photo, (20 + t * (size[0] - photo.width - 40) // count, (size[1] - photo.height) // 2))
        frames.append(frame)
    return frames


@contextmanager
def camera_page(clip, url: str):
    """The page at `url` in Chromium whose camera plays `clip`: (page, errors the page raised)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = services.launch_chromium(
            p,
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={clip}",
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            yield page, errors
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_page_camera_mode_streams_frames_and_draws_tracked_boxes(endpoint, known_image, tmp_path):
    clip = tmp_path / "camera.y4m"
    write_y4m(clip, moving_clip(known_image))
    with camera_page(clip, endpoint["url"] + "/") as (page, errors):
        page.eval_on_selector("#conf", "el => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
        page.click("#camera")
        page.wait_for_function("window.liveStats.results >= 5", timeout=90_000)
        stats = page.evaluate("window.liveStats")
        assert stats["sent"] >= stats["results"] >= 5 and stats["latency_ms"] > 0 and stats["fps"] > 0, stats
        assert int(page.get_attribute("#canvas", "data-boxes")) > 0
        assert page.get_attribute("body", "data-live") == "on" and page.inner_text("#error") == ""
        assert "frames/s" in page.inner_text("#live-stats")
        people = page.locator("#people td[data-people]").all_inner_texts()
        assert len(people) == len(CLASS_NAMES) and all("%" in p for p in people), people
        # The total is the people counted in each mask state (each person once, in one state).
        assert int(page.inner_text("#people-total")) == sum(int(p.split()[0]) for p in people), people
        services.assert_last_box_in_its_class_colour(page)
        page.click("#camera")  # stop: the page closes its stream
        page.wait_for_function("document.body.dataset.live === 'off'", timeout=10_000)
        assert not errors, errors
    deadline = time.monotonic() + 20
    while streams(endpoint)["open"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert streams(endpoint)["open"] == 0


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_page_camera_reconnects_when_its_streams_replica_dies(endpoint, known_image, tmp_path):
    """kill -9 of the replica that holds the page's stream: the page opens a new stream on its
    own once Serve has replaced the replica, and answers resume, the camera never stopped."""
    import os
    import signal

    from ray import serve

    from facemask.serving import build_app

    clip = tmp_path / "camera.y4m"
    write_y4m(clip, moving_clip(known_image))
    serve.run(
        build_app(
            {
                "model_uri": str(endpoint["weights"]),
                "threads": 1,
                **LIMITS,
                "deployment_options": {"ray_actor_options": {"num_cpus": 0.25}},
            }
        ),
        name="livekill",
        route_prefix="/livekill",
    )
    try:
        (victim,) = services.wait_for_replicas("livekill", 1).values()
        with camera_page(clip, endpoint["url"] + "/livekill/") as (page, errors):
            page.click("#camera")
            page.wait_for_function("window.liveStats.results >= 3", timeout=90_000)
            os.kill(victim, signal.SIGKILL)
            page.wait_for_function("window.liveStats.reconnects >= 1", timeout=60_000)
            before = page.evaluate("window.liveStats.results")
            page.wait_for_function(f"window.liveStats.results >= {before + 3}", timeout=120_000)
            state = {
                "stats": page.evaluate("window.liveStats"),
                "error": page.inner_text("#error"),
                "live": page.get_attribute("body", "data-live"),
            }
            assert state["live"] == "on" and state["error"] == "", state
            assert victim not in services.replica_pids("livekill").values()
            page.click("#camera")
            page.wait_for_function("document.body.dataset.live === 'off'", timeout=10_000)
            assert not errors, errors
    finally:
        serve.delete("livekill")


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def test_predict_on_a_live_mjpeg_stream_tracks_and_stops_at_max_frames(registered_detector, known_image, tmp_path):
    frames = [jpeg(f) for f in moving_clip(known_image, count=10, size=(320, 240))]
    out = tmp_path / "live"
    with MjpegServer(frames, fps=20) as camera:
        done = subprocess.run(
            [*FACEMASK, "predict", camera.url, "--model-uri", str(registered_detector["weights"]), "--out", str(out)]
            + "--conf 0 --imgsz 160 --max-det 3 --max-frames 6 --save".split(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 frames" in done.stdout and "people:" in done.stdout
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    assert [line["frame"] for line in lines] == sorted({line["frame"] for line in lines})
    assert all(1 <= len(line["detections"]) <= 3 and all("track_id" in d for d in line["detections"]) for line in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "stream" and summary["frames"]["processed"] == 6
    assert summary["frames"]["read"] >= 6 and set(summary["people"]["by_class"]) == set(CLASS_NAMES)
    import cv2

    video = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 6 and int(video.get(cv2.CAP_PROP_FRAME_WIDTH)) == 320
    video.release()


def test_predict_names_a_camera_or_stream_it_cannot_open(registered_detector, tmp_path):
    port = free_port()  # nothing listens there
    done = subprocess.run(
        [*FACEMASK, "predict", f"http://127.0.0.1:{port}/none.mjpg", "--model-uri", str(registered_detector["weights"])]
        + ["--out", str(tmp_path / "o"), "--max-frames", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "could not open it" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.whole_machine(reason="the real stream must be answered within 5 s while idle sockets wait")
def test_idle_sockets_that_never_say_hello_do_not_hold_a_real_stream_off(known_image, tmp_path, machine_alone):
    """200 /live sockets open and silent beside a real stream, on `facemask serve` as it starts
    (HAProxy, one replica). Each socket holds one of the replica's slots while it waits for its
    first message; the replica keeps at most MAX_WAITING_HELLOS waiting and closes the longest
    waiting for each newer one, so the real stream is ready within seconds (11 s, or refused,
    when every socket could wait HELLO_TIMEOUT_S)."""
    import asyncio

    import websockets

    from facemask.serving.live.session import MAX_WAITING_HELLOS
    from tests.services import facemask_serve

    async def attack_and_stream(url: str) -> tuple[float, dict, int]:
        live = url.replace("http://", "ws://") + "/live"

        async def silent():
            return await websockets.connect(live, open_timeout=60)

        idle = [asyncio.create_task(silent()) for _ in range(200)]
        await asyncio.sleep(1.0)
        started = time.perf_counter()
        async with websockets.connect(live, open_timeout=60) as ws:
            await ws.send(json.dumps({"conf": 0.25}))
            ready = json.loads(await asyncio.wait_for(ws.recv(), 60))
            waited = time.perf_counter() - started
            await ws.send(jpeg(Image.open(known_image).convert("RGB")))
            result = json.loads(await asyncio.wait_for(ws.recv(), 60))
        opened = 0
        for socket in await asyncio.gather(*idle, return_exceptions=True):
            if not isinstance(socket, BaseException):
                opened += 1
                await socket.close()
        return waited, {"ready": ready["type"], "result": result["type"]}, opened

    with facemask_serve(None, tmp_path, "--backend", "simulated-gpu", "--num-cpus", "0.5") as (_, url, _):
        services.wait_until(lambda: httpx.get(url + "/live/streams", timeout=10).status_code == 200, 60, "the app")
        time.sleep(3)  # HAProxy has the replica itself, not only the fallback proxy
        with machine_alone():  # the sockets and the stream; the endpoint's start and stop run beside other tests
            waited, answers, opened = asyncio.run(attack_and_stream(url))
            stats = httpx.get(url + "/live/streams", timeout=10).json()
    print(f"/live beside 200 silent sockets: ready after {waited:.2f} s; {opened} of them opened, stats {stats}")
    assert answers == {"ready": "ready", "result": "result"}
    assert waited < 5.0
    assert stats["evicted"] >= opened - MAX_WAITING_HELLOS - 1 and stats["waiting_hello"] <= MAX_WAITING_HELLOS
