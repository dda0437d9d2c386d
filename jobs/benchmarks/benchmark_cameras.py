"""Benchmark: how many camera streams one node sustains with `facemask watch`, against a plain loop.

For each backend (simulated-gpu: a GPU's batch latency and no model; pt: the real CPU model)
and each resolution (1080p, 720p) at --fps, with N looped H.264 files as cameras (decoded as a
camera's stream is: the reader paces them at --fps):
- watch: `facemask watch`'s runner (Ray actors for the readers, a few cameras each, and the
  detector; one batch across cameras, ByteTrack per camera);
- per-camera: the same with a reader process per camera (--cameras-per-reader 1), as before
  readers were packed: what packing them saves;
- fast: the same with --fast-decode (no deblocking filter);
- events: watch with events and evidence on (the camera list's `events:` section at its defaults,
  delivered to a loopback webhook): the simulated GPU's faces stay in view, so each camera's two
  violating people raise an event each once the rule holds, with a snapshot, all cameras at
  once (a burst no real scene makes), then every frame is tracked for events;
- clips: events with a clip per event (`clip: {}`): every camera's frames buffered at 4 a
  second, a clip encoded 4 s after each alert;
- plain: what a user writes without Ray: one process, a reader thread per camera (the same
  reader), and a loop that sends each camera's newest frame to the model on its own, then tracks it.

A step sustains its N streams when at least 95% of the frames offered (N x fps x seconds) reach
the model; it reports latency from a frame's capture to its detections (p50, p99), and the CPU
per processed frame by stage: decode (the reader's thread CPU), resize, the inference call (the
detector's process), tracking, and transport (everything else: Ray's RPCs, the object store,
its raylet and GCS). The ladder stops at the first N a mode cannot sustain. --soak-minutes runs
--soak-streams 1080p streams that long and samples the memory (USS) of every process every 10 s.

    python jobs/benchmarks/benchmark_cameras.py [--backends simulated-gpu,pt] [--resolutions 1080p,720p]
        [--streams 4,8,10,12,14,16] [--pt-streams 1,2,4] [--seconds 15] [--bitrate 2M] [--cameras-per-reader N]
        [--soak-minutes 10] [--out DIR]

The clips are the real photos of data/kaggle (generated ones without it) scaled to the size,
panning, with sensor-like noise, x264 at --bitrate, no B-frames, a keyframe a second, as IP
cameras send; their decode costs what a camera's does at that bitrate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_serve import REAL, untrained_weights  # noqa: E402

from facemask.core.settings import WatchConfig  # noqa: E402

SIZES = {"1080p": (1920, 1080), "720p": (1280, 720)}
SUSTAINED = 0.95
STAGES = ("decode", "resize", "inference", "tracking", "transport")


def make_clips(folder: Path, size: str, fps: int, bitrate: str, count: int = 4) -> list[Path]:
    """`count` 8-second H.264 clips of different photos at `size`, panning, with noise."""
    width, height = SIZES[size]
    photos = sorted(REAL.iterdir())[:count] if REAL.is_dir() else synth_photos(folder, count)
    clips = []
    for i, photo in enumerate(photos):
        clip = folder / f"{size}-{bitrate}-{i}.mkv"
        if not clip.exists():
            scale = f"scale={int(width * 1.1)}:{int(height * 1.1)},crop={width}:{height}:x='t*10':y=0"
            command = ["ffmpeg", "-loglevel", "error", "-y", "-loop", "1", "-framerate", str(fps), "-i", str(photo)]
            command += ["-vf", f"{scale},noise=alls=6:allf=t", "-t", "8", "-c:v", "libx264", "-preset", "veryfast"]
            command += ["-bf", "0", "-g", str(fps), "-b:v", bitrate, "-pix_fmt", "yuv420p", str(clip)]
            subprocess.run(command, check=True)
        clips.append(clip)
    return clips


def synth_photos(folder: Path, count: int) -> list[Path]:
    from facemask.data.synth import synthesize

    synthesize(folder / "synth", images=count, seed=5)
    return sorted((folder / "synth" / "images").iterdir())[:count]


def cpu_of(pid: int) -> float:
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.Error:
        return 0.0


def ray_pids(exclude: set[int]) -> list[int]:
    """Ray's own processes below this one (raylet, GCS, idle workers), less `exclude`."""
    from facemask.core.lifecycle import descendants

    return [p for p in descendants() if p not in exclude]


def watch_step(
    cfg: WatchConfig, clips: list[Path], streams: int, warmup: float, seconds: float, events: dict | None = None
) -> dict:
    """`facemask watch`'s runner on `streams` cameras; counters from the end of `warmup` to its end.
    `events`: the camera list's `events:` section, if any."""
    from facemask.video.watch.runner import Watch

    listing = cfg.out / "cameras.yaml"
    cameras = [{"id": f"cam{i:02d}", "url": str(clips[i % len(clips)]), "fps": FPS} for i in range(streams)]
    listing.write_text(json.dumps({"cameras": cameras, **({"events": events} if events else {})}))
    watch = Watch(WatchConfig(**{**cfg.__dict__, "cameras": listing, "max_seconds": warmup + seconds + 2}))
    marks: list[dict] = []

    def sample() -> None:
        for at in (warmup, warmup + seconds):
            time.sleep(max(0.0, watch.started + at - time.time()))
            marks.append(snapshot(watch))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    watch.run()
    sampler.join()
    step = step_figures(marks[0], marks[1], streams)
    if events:  # what the events cost bought: every event, snapshot and clip, and none dropped
        found = json.loads((cfg.out / "summary.json").read_text())["events"]
        step["events"] = {k: found.get(k) for k in ("started", "ended", "snapshot_errors", "errors", "clips")}
    return step


def webhook() -> str:
    """A loopback webhook receiver that takes every message (200), for the events mode's delivery."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Taken(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Taken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/hook"


def snapshot(watch) -> dict:
    with watch.lock:
        watched = list(watch.watched.values())
    readers = sorted({w.status.get("pid") for w in watched if w.status.get("pid")})  # a process reads a few cameras
    detector = watch.model["pid"]
    own = {os.getpid(), detector, *readers}
    return {
        "time": time.time(),
        "processed": sum(w.processed for w in watched),
        "latencies": {w.camera.id: w.processed for w in watched},
        "watched": watched,
        "decode_ms": sum(w.status.get("decode_ms", 0.0) for w in watched),
        "resize_ms": sum(w.status.get("resize_ms", 0.0) for w in watched),
        "tracking_ms": sum(w.tracking_ms for w in watched),
        # Where the frames offered went: decoded or skipped by a reader behind, then replaced or processed.
        "frames": {k: sum(w.status.get(k, 0) for w in watched) for k in ("decoded", "skipped_behind", "dropped")},
        "cpu": {
            "readers": sum(cpu_of(p) for p in readers),
            "detector": cpu_of(detector),
            "runner": cpu_of(os.getpid()),
        },
        "ray_pids": {p: cpu_of(p) for p in ray_pids(own)},
    }


def step_figures(a: dict, b: dict, streams: int) -> dict:
    seconds = b["time"] - a["time"]
    processed = b["processed"] - a["processed"]
    # The frames each camera processed in between: the newest of its kept latencies.
    latencies = [
        ms
        for w in b["watched"]
        for ms in list(w.latencies_ms)[
            len(w.latencies_ms) - (b["latencies"][w.camera.id] - a["latencies"].get(w.camera.id, 0)) :
        ]
    ]
    cpu = {k: (b["cpu"][k] - a["cpu"][k]) * 1000 for k in a["cpu"]}
    # Ray's own processes: those alive at the end, from their CPU at the start (0 if started since).
    cpu["ray"] = sum(used - a["ray_pids"].get(pid, 0.0) for pid, used in b["ray_pids"].items()) * 1000
    per = max(1, processed)
    decode, resize = (b["decode_ms"] - a["decode_ms"]) / per, (b["resize_ms"] - a["resize_ms"]) / per
    tracking = (b["tracking_ms"] - a["tracking_ms"]) / per
    total = sum(cpu.values()) / per
    ms = {"decode": decode, "resize": resize, "inference": cpu["detector"] / per, "tracking": tracking}
    ms["transport"] = max(0.0, total - sum(ms.values()))
    result = figures(streams, seconds, processed, latencies, ms, total)
    result["cpu_ms_per_frame_by_process"] = {k: round(v / per, 2) for k, v in cpu.items()}
    result["frames"] = {k: b["frames"][k] - a["frames"][k] for k in a["frames"]}  # statuses: up to a second old
    return result


def figures(streams: int, seconds: float, processed: int, latencies: list[float], ms: dict, total: float) -> dict:
    offered = streams * FPS * seconds
    lat = np.array(latencies or [np.nan])
    return {
        "streams": streams,
        "offered": round(offered),
        "processed": processed,
        "share": round(processed / offered, 3),
        "sustained": processed >= SUSTAINED * offered,
        "p50_ms": round(float(np.nanpercentile(lat, 50)), 1),
        "p99_ms": round(float(np.nanpercentile(lat, 99)), 1),
        "cpu_ms_per_frame": {k: round(v, 2) for k, v in ms.items()},
        "cpu_ms_total": round(total, 2),
        "cores_busy": round(total * processed / seconds / 1000, 2),
    }


def plain_step(model, clips: list[Path], streams: int, warmup: float, seconds: float, imgsz: int) -> dict:
    """One process: a reader thread per camera, each newest frame to the model on its own, then tracked."""
    from facemask.serving.live.tracker import TRACK_CONF
    from facemask.video.watch.cameras import Camera
    from facemask.video.watch.compliance import CameraCompliance
    from facemask.video.watch.reader import CameraReader

    readers = [CameraReader(Camera(f"cam{i:02d}", str(clips[i % len(clips)]), FPS), imgsz) for i in range(streams)]
    trackers = [CameraCompliance(r.camera.id, 60.0, 1, FPS, 0.25) for r in readers]
    started = time.time()
    marks, latencies, tracking, processed = [], [], 0.0, 0
    try:
        for at in (warmup, warmup + seconds):
            while time.time() < started + at:
                took = 0
                for reader, tracker in zip(readers, trackers):
                    meta, frame = reader.latest()
                    if meta is None:
                        continue
                    found = model.predict([frame], conf=TRACK_CONF, imgsz=imgsz)[0]
                    t0 = time.perf_counter()
                    tracker.update([d.to_dict() for d in found], None, meta["width"], meta["height"])
                    tracking += (time.perf_counter() - t0) * 1000
                    latencies.append((time.time() - meta["captured"]) * 1000)
                    processed, took = processed + 1, took + 1
                if not took:
                    time.sleep(0.002)
            marks.append(
                {
                    "time": time.time(),
                    "cpu": time.process_time() * 1000,
                    "processed": processed,
                    "latencies": len(latencies),
                    "decode": sum(r.ms["decode"] for r in readers),
                    "resize": sum(r.ms["resize"] for r in readers),
                    "tracking": tracking,
                }
            )
    finally:
        for reader in readers:
            reader.stop()
    a, b = marks
    per = max(1, b["processed"] - a["processed"])
    ms = {k: (b[k] - a[k]) / per for k in ("decode", "resize", "tracking")}
    total = (b["cpu"] - a["cpu"]) / per
    ms = {"decode": ms["decode"], "resize": ms["resize"], "inference": 0.0, "tracking": ms["tracking"]}
    ms["inference"] = max(0.0, total - sum(ms.values()))  # the rest of the one process: the model's calls
    ms["transport"] = 0.0
    return figures(streams, b["time"] - a["time"], per, latencies[a["latencies"] :], ms, total)


def soak(cfg: WatchConfig, clips: list[Path], streams: int, minutes: float) -> dict:
    """`streams` cameras for `minutes`: the memory (USS) of all processes every 10 s."""
    import psutil

    from facemask.core.lifecycle import descendants
    from facemask.video.watch.runner import Watch

    listing = cfg.out / "soak.yaml"
    cameras = [{"id": f"cam{i:02d}", "url": str(clips[i % len(clips)]), "fps": FPS} for i in range(streams)]
    listing.write_text(json.dumps({"cameras": cameras}))
    watch = Watch(WatchConfig(**{**cfg.__dict__, "cameras": listing, "max_seconds": minutes * 60}))
    samples: list[tuple[float, float]] = []

    def sample() -> None:
        while time.time() < watch.started + minutes * 60 - 5:
            total = 0
            for pid in {os.getpid(), *descendants()}:
                try:
                    total += psutil.Process(pid).memory_full_info().uss
                except psutil.Error:
                    pass
            samples.append((time.time() - watch.started, total / 2**20))
            time.sleep(10)

    threading.Thread(target=sample, daemon=True).start()
    result = watch.run()
    after_first = [mb for at, mb in samples if 60 <= at < 120]
    last = [mb for at, mb in samples if at >= minutes * 60 - 65]
    first_mb, last_mb = float(np.mean(after_first or [np.nan])), float(np.mean(last or [np.nan]))
    processed = sum(c["processed"] for c in result.cameras.values())
    return {
        "streams": streams,
        "minutes": minutes,
        "memory_mb_minute_2": round(first_mb, 1),
        "memory_mb_last_minute": round(last_mb, 1),
        "change": round(last_mb / first_mb - 1, 3),
        "min_mb": round(min(mb for _, mb in samples), 1),
        "max_mb": round(max(mb for _, mb in samples[6:] or samples), 1),
        "share_processed": round(processed / (streams * FPS * result.seconds), 3),
        "samples": samples,
    }


def ladder(run_step, counts: list[int]) -> list[dict]:
    """Steps up the stream counts until one is not sustained."""
    steps = []
    for count in counts:
        steps.append(run_step(count))
        print(json.dumps(steps[-1]), flush=True)
        if not steps[-1]["sustained"]:
            break
    return steps


def print_table(results: list[dict]) -> None:
    head = f"{'backend':14s} {'size':6s} {'mode':6s} {'N':>3s} {'processed':>9s} {'p50 ms':>7s} {'p99 ms':>7s}"
    print("\n" + head + "  CPU ms/frame: " + " ".join(f"{s:>9s}" for s in STAGES) + f" {'total':>6s} {'cores':>5s}")
    for r in results:
        for s in r["steps"]:
            cells = " ".join(f"{s['cpu_ms_per_frame'][k]:9.2f}" for k in STAGES)
            print(
                f"{r['backend']:14s} {r['size']:6s} {r['mode']:6s} {s['streams']:3d} {s['share']:8.1%}"
                f"{'' if s['sustained'] else '*'} {s['p50_ms']:7.1f} {s['p99_ms']:7.1f}                {cells}"
                f" {s['cpu_ms_total']:6.2f} {s['cores_busy']:5.2f}"
            )
    print("* not sustained: under 95% of the offered frames reached the model")
    modes = list(dict.fromkeys(r["mode"] for r in results))
    print(f"\nstreams sustained at {FPS} fps, and the ratio to the plain loop's")
    print(f"{'backend':14s} {'size':6s} " + " ".join(f"{m:>6s}" for m in modes) + "  ratios")
    for backend, size in sorted({(r["backend"], r["size"]) for r in results}):
        best = {
            r["mode"]: max([s["streams"] for s in r["steps"] if s["sustained"]] or [0])
            for r in results
            if (r["backend"], r["size"]) == (backend, size)
        }
        ratios = [f"{m}/plain {best[m] / best['plain']:.2f}" for m in modes if m != "plain" and best.get("plain")]
        print(f"{backend:14s} {size:6s} " + " ".join(f"{best.get(m, 0):6d}" for m in modes) + "  " + ", ".join(ratios))


def main() -> None:
    global FPS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="simulated-gpu,pt")
    parser.add_argument("--resolutions", default="1080p,720p")
    parser.add_argument("--streams", default="4,6,8,10,12,14,16", help="simulated-gpu's ladder")
    parser.add_argument("--pt-streams", default="1,2,4", help="the CPU model's ladder")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--warmup", type=float, default=6)
    parser.add_argument("--bitrate", default="2M", help="x264's average bitrate: a 1080p15 camera's main stream")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--pt-imgsz", type=int, default=320, help="the CPU model's size (the hour recipe's)")
    parser.add_argument(
        "--modes",
        default="watch,fast,plain",
        help="fast: watch with --fast-decode; events: with events; clips: with events and clips; "
        "per-camera: watch with a reader process per camera (--cameras-per-reader 1)",
    )
    parser.add_argument(
        "--cameras-per-reader", type=int, default=None, help="the watch modes' (default: `facemask watch`'s)"
    )
    parser.add_argument("--soak-minutes", type=float, default=0)
    parser.add_argument("--soak-streams", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    FPS = args.fps
    from facemask.core.runtime import configure_runtime, init_ray

    configure_runtime()
    init_ray()
    work = Path(tempfile.mkdtemp(prefix="fm-cameras-"))
    weights = untrained_weights(work)
    results = []
    for backend in args.backends.split(","):
        base = WatchConfig(
            cameras=work / "cameras.yaml",
            out=work / "out",
            model_uri=str(weights),
            backend=backend,
            device="cpu",
            imgsz=args.imgsz if backend == "simulated-gpu" else args.pt_imgsz,
            reader_cpus=0.01,
            detector_cpus=0.01,
            **({"cameras_per_reader": args.cameras_per_reader} if args.cameras_per_reader else {}),
            port=None,
            tracking_uri="sqlite:///" + str(work / "mlflow.db"),
        )
        base.out.mkdir(parents=True, exist_ok=True)
        counts = [int(n) for n in (args.streams if backend == "simulated-gpu" else args.pt_streams).split(",")]
        for size in args.resolutions.split(","):
            clips = make_clips(work, size, args.fps, args.bitrate)
            for mode in args.modes.split(","):
                print(f"\n{backend} {size} {mode}", flush=True)
                if mode in ("watch", "fast", "events", "clips", "per-camera"):
                    own = {"fast_decode": mode == "fast"} | ({"cameras_per_reader": 1} if mode == "per-camera" else {})
                    cfg = WatchConfig(**{**base.__dict__, **own})
                    events = events_section(clips=mode == "clips") if mode in ("events", "clips") else None
                    step = lambda n, cfg=cfg, e=events: watch_step(cfg, clips, n, args.warmup, args.seconds, e)  # noqa: E731
                else:
                    model = plain_model(backend, weights)
                    step = lambda n: plain_step(model, clips, n, args.warmup, args.seconds, base.imgsz)  # noqa: E731
                results.append({"backend": backend, "size": size, "mode": mode, "steps": ladder(step, counts)})
    print_table(results)
    report = {"fps": FPS, "bitrate": args.bitrate, "imgsz": args.imgsz, "pt_imgsz": args.pt_imgsz}
    report["results"] = results
    if args.soak_minutes:
        base_cfg = WatchConfig(**{**base.__dict__, "backend": "simulated-gpu"})
        clips = make_clips(work, "1080p", args.fps, args.bitrate)
        report["soak"] = soak(base_cfg, clips, args.soak_streams, args.soak_minutes)
        s = report["soak"]
        print(
            f"\nsoak: {s['streams']} streams of 1080p for {s['minutes']:g} min: memory {s['memory_mb_minute_2']:.0f} MB"
            f" in minute 2, {s['memory_mb_last_minute']:.0f} MB in the last ({s['change']:+.1%}); "
            f"{s['share_processed']:.1%} of offered frames processed"
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cameras.json").write_text(json.dumps(report, indent=2))


def events_section(clips: bool) -> dict:
    """The events modes' section: the default rule and evidence, a webhook, and a clip per event."""
    import secrets

    os.environ["FACEMASK_BENCH_HOOK_SECRET"] = secrets.token_hex(16)
    section = {"webhook": {"url": webhook(), "secret_env": "FACEMASK_BENCH_HOOK_SECRET"}}
    return {**section, "clip": {}} if clips else section


def plain_model(backend: str, weights: Path):
    if backend == "simulated-gpu":
        from facemask.core.settings import ServeConfig
        from facemask.serving.simulated_gpu import SimulatedGPU, parse_latency

        return SimulatedGPU(parse_latency(ServeConfig.simulated_latency))
    from facemask.detection.detector import load_detector

    return load_detector(str(weights), "cpu", "pt", warm=True)


FPS = 15

if __name__ == "__main__":
    main()
