"""Benchmark: one live stream through the /live WebSocket on Serve, against the same loop in one process.

For each image size (320 and 640), on CPU:
- plain: what a user writes without a server: one process that takes each frame, calls
  `Detector.predict` and updates the tracker (torch on every core);
- live, paced: one stream sending its next frame as soon as the previous answer arrives
  (what the page does), through Serve's proxy and the WebSocket: frames/s end to end and
  p50/p95 latency per frame;
- live, flooded: a camera sending 30 frames/s whatever the model's speed, for --seconds:
  the share of frames dropped (newest frame wins) and the latency of those answered.

    python jobs/benchmarks/benchmark_live.py [--model-uri PATH.pt] [--frames 60] [--seconds 8]

Without --model-uri it builds an untrained yolo26n with our three classes (YOLO26 has no
NMS, so its cost does not depend on what it finds). Frames are photos of the real set in
data/kaggle (or generated ones) at 640x480.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmark_serve import REAL, untrained_weights  # noqa: E402

from facemask.core.runtime import free_port, init_ray  # noqa: E402


def frames(count: int, folder: Path) -> list[bytes]:
    """JPEG frames at 640x480: the real photos of data/kaggle if present, else generated ones."""
    from PIL import Image

    if REAL.is_dir():
        paths = sorted(REAL.iterdir())[:count]
    else:
        from facemask.data.synth import synthesize

        paths = sorted((synthesize(folder / "synth", count) / "images").iterdir())[:count]
    out = []
    for path in paths:
        with Image.open(path) as image:
            canvas = image.convert("RGB").resize((640, 480))
        buffer = io.BytesIO()
        canvas.save(buffer, format="JPEG", quality=80)
        out.append(buffer.getvalue())
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def plain(model: str, jpegs: list[bytes], imgsz: int, count: int) -> dict:
    from PIL import Image

    from facemask.detection.detector import load_detector
    from facemask.serving.live.tracker import PeopleTracker
    from facemask.tracking import default_tracking_uri

    detector, tracker = load_detector(model, warm=True, tracking_uri=default_tracking_uri()), PeopleTracker()
    latencies, started = [], time.perf_counter()
    for i in range(count):
        t = time.perf_counter()
        image = Image.open(io.BytesIO(jpegs[i % len(jpegs)])).convert("RGB")
        tracker.update([d.to_dict() for d in detector.predict([image], conf=0.25, imgsz=imgsz)[0]])
        latencies.append((time.perf_counter() - t) * 1000)
    seconds = time.perf_counter() - started
    return {"fps": count / seconds, "p50": pct(latencies, 50), "p95": pct(latencies, 95), "dropped": 0.0}


def paced(url: str, jpegs: list[bytes], imgsz: int, count: int) -> dict:
    from websockets.sync.client import connect

    with connect(url, max_size=2**24) as ws:
        ws.send(json.dumps({"imgsz": imgsz, "fps": 120}))
        assert json.loads(ws.recv(timeout=60))["type"] == "ready"
        ws.send(jpegs[0])  # warm-up
        json.loads(ws.recv(timeout=60))
        latencies, model_ms, started = [], [], time.perf_counter()
        for i in range(count):
            t = time.perf_counter()
            ws.send(jpegs[i % len(jpegs)])
            answer = json.loads(ws.recv(timeout=60))
            latencies.append((time.perf_counter() - t) * 1000)
            model_ms.append(answer["timings"]["inference_ms"])
        seconds = time.perf_counter() - started
    return {
        "fps": count / seconds,
        "p50": pct(latencies, 50),
        "p95": pct(latencies, 95),
        "dropped": 0.0,
        "model_ms": statistics.median(model_ms),
    }


def flooded(url: str, jpegs: list[bytes], imgsz: int, seconds: float, rate: float = 30.0) -> dict:
    from websockets.sync.client import connect

    sent_at: dict[int, float] = {}
    answers: list[dict] = []
    with connect(url, max_size=2**24) as ws:
        ws.send(json.dumps({"imgsz": imgsz, "fps": 120}))
        assert json.loads(ws.recv(timeout=60))["type"] == "ready"

        def read() -> None:
            while True:
                answer = json.loads(ws.recv(timeout=60))
                answer["at"] = time.perf_counter()
                answers.append(answer)
                if answer.get("frame") == last:
                    return

        last = int(seconds * rate) - 1
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        started = time.perf_counter()
        for i in range(last + 1):
            time.sleep(max(0.0, started + i / rate - time.perf_counter()))
            sent_at[i] = time.perf_counter()
            ws.send(jpegs[i % len(jpegs)])
        reader.join(timeout=120)
        elapsed = time.perf_counter() - started
    results = [a for a in answers if a["type"] == "result"]
    latencies = [(a["at"] - sent_at[a["frame"]]) * 1000 for a in results]
    return {
        "fps": len(results) / elapsed,
        "p50": pct(latencies, 50),
        "p95": pct(latencies, 95),
        "dropped": 1 - len(results) / (last + 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", default=None)
    parser.add_argument("--frames", type=int, default=60, help="Frames per paced and plain run.")
    parser.add_argument("--seconds", type=float, default=8.0, help="Length of each flooded run.")
    parser.add_argument("--sizes", default="320,640")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_uri or str(untrained_weights(Path(tmp)))
        jpegs = frames(32, Path(tmp))
        results = {}
        for size in sizes:
            results[("plain, in one process", size)] = plain(model, jpegs, size, args.frames)
        init_ray(serving=True)
        from ray import serve

        from facemask.serving import AppArgs, build_app

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            serve.run(
                build_app(AppArgs(model_uri=model, deployment_options={"ray_actor_options": {"num_cpus": 1}})),
                name="live",
                route_prefix="/",
            )
            url = f"ws://127.0.0.1:{port}/live"
            for size in sizes:
                results[("live, paced", size)] = paced(url, jpegs, size, args.frames)
                results[("live, 30 frames/s sent", size)] = flooded(url, jpegs, size, args.seconds)
        finally:
            serve.shutdown()
    print(f"\none stream, CPU, model {args.model_uri or 'untrained yolo26n'}, 640x480 JPEG frames")
    print(f"{'path':26s} {'imgsz':>5s} {'frames/s':>9s} {'p50 ms':>7s} {'p95 ms':>7s} {'dropped':>8s} {'vs plain':>9s}")
    for (name, size), r in results.items():
        base = results[("plain, in one process", size)]["fps"]
        print(
            f"{name:26s} {size:5d} {r['fps']:9.1f} {r['p50']:7.1f} {r['p95']:7.1f} {r['dropped']:8.0%} "
            f"{r['fps'] / base:8.2f}x"
        )


if __name__ == "__main__":
    main()
