"""Benchmark: the Serve endpoint over HTTP against the raw in-process model call, PyTorch and ONNX.

In one run, on the same images and the same model:
1. raw: `Detector.predict([image])` called sequentially in this process (the baseline);
2. HTTP: the Serve app on loopback at concurrency 1, 4 and 16 (`@serve.batch` forms the batches);
for the PyTorch backend and for the ONNX export served with onnxruntime.
It prints requests/s and p50/p95/p99 latency, then the ratios against their targets.
Loopback only, and bounded: --requests per level and --max-seconds per level.

    python jobs/benchmark_serve.py [--model-uri PATH.pt|models:/...] [--imgsz 320] [--requests 64] [--device cpu|0]

Without --model-uri it builds an untrained yolo26n with our three classes: YOLO26 has no
NMS, so its cost per image does not depend on training.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT.parent / "shared" / "datasets" / "face-mask-detection" / "images"


def untrained_weights(folder: Path) -> Path:
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from facemask.classes import yolo_names

    model = DetectionModel("yolo26n.yaml", nc=3, verbose=False)
    model.names = yolo_names()
    path = folder / "yolo26n-untrained.pt"
    torch.save({"model": model, "train_args": {}, "epoch": -1, "date": None}, path)
    return path


def load_images(count: int, folder: Path) -> list[bytes]:
    """JPEG bytes: the shared real images if present, else generated ones."""
    if REAL.is_dir():
        paths = sorted(REAL.iterdir())[:count]
    else:
        from facemask.synth import synthesize

        synthesize(folder / "synth", images=count, seed=3)
        paths = sorted((folder / "synth" / "images").iterdir())
    out = []
    for path in paths:
        from PIL import Image

        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def stats(latencies: list[float], seconds: float, batch_sizes: list[int] | None = None) -> dict:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000

    return {"requests": len(latencies), "rps": len(latencies) / seconds, "p50": pct(50), "p95": pct(95), "p99": pct(99),
            "batch": statistics.mean(batch_sizes) if batch_sizes else 1.0}


def raw(detector, images: list[bytes], imgsz: int, requests: int, max_seconds: float) -> dict:
    from PIL import Image

    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    for image in decoded[:3]:
        detector.predict([image], imgsz=imgsz)
    latencies, started = [], time.perf_counter()
    for i in range(requests):
        t = time.perf_counter()
        detector.predict([decoded[i % len(decoded)]], imgsz=imgsz)
        latencies.append(time.perf_counter() - t)
        if time.perf_counter() - started > max_seconds:
            break
    return stats(latencies, time.perf_counter() - started)


async def load(url: str, images: list[bytes], imgsz: int, concurrency: int, requests: int, max_seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    batches: list[int] = []
    errors: dict[int, int] = {}
    deadline = time.perf_counter() + max_seconds
    counter = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            if time.perf_counter() > deadline:
                return
            t = time.perf_counter()
            r = await client.post("/predict", params={"imgsz": imgsz}, content=images[i % len(images)])
            if r.status_code != 200:
                errors[r.status_code] = errors.get(r.status_code, 0) + 1
                continue
            latencies.append(time.perf_counter() - t)
            batches.append(r.json()["timings"]["batch_size"])

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        for b in images[:max(3, concurrency)]:  # warm every connection and the batch path
            await client.post("/predict", params={"imgsz": imgsz}, content=b)
        started = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        seconds = time.perf_counter() - started
    if not latencies:
        raise SystemExit(f"every request at concurrency {concurrency} failed: {errors}")
    result = stats(latencies, seconds, batches)
    result["errors"] = errors
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", default=None)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--requests", type=int, default=64, help="Requests per level.")
    parser.add_argument("--max-seconds", type=float, default=60, help="Time bound per level.")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--device", default="cpu", help="cpu, or a GPU index for the PyTorch backend.")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="Inference threads of the raw baseline.")
    parser.add_argument("--replicas", type=int, default=1, help="Detector replicas.")
    parser.add_argument("--replica-threads", type=int, default=None, help="Inference threads per replica (default: threads / replicas).")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-s", type=float, default=0.0)
    parser.add_argument("--backends", default="pt,onnx")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    backends = args.backends.split(",")

    from facemask.runtime import configure_runtime, init_ray

    configure_runtime()
    import torch

    from facemask.detector import load_detector
    from facemask.export import export_onnx

    work = Path(tempfile.mkdtemp(prefix="facemask-bench-serve-"))
    model_uri = args.model_uri or str(untrained_weights(work))
    images = load_images(args.images, work)
    if "onnx" in backends:
        export_onnx(model_uri, imgsz=args.imgsz)
    device_name = torch.cuda.get_device_name(0) if args.device != "cpu" and torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"model {model_uri}, imgsz {args.imgsz}, {len(images)} images, {args.requests} requests per level, on {device_name}",
          flush=True)

    results: dict[str, dict] = {}
    for backend in backends:
        detector = load_detector(model_uri, device=args.device, backend=backend, threads=args.threads)
        results[f"{backend} raw"] = raw(detector, images, args.imgsz, args.requests, args.max_seconds)
        del detector
        print(f"  {backend} raw done", flush=True)

    init_ray(serving=True)
    from ray import serve

    from facemask.runtime import free_port
    from facemask.serving import AppArgs, build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    try:
        for backend in backends:
            gpus = 1 if backend == "pt" and args.device != "cpu" else 0
            serve.run(build_app(AppArgs(
                model_uri=model_uri, backend=backend, device=args.device,
                threads=args.replica_threads or max(1, args.threads // args.replicas),
                max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_s,
                detector_options={"num_replicas": args.replicas, "ray_actor_options": {"num_cpus": 0.5, "num_gpus": gpus / args.replicas},
                                  "max_ongoing_requests": 2 * args.max_batch_size, "max_queued_requests": 256},
                ingress_options={"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 256},
            )), name="bench", route_prefix="/")
            for c in levels:
                results[f"{backend} http c={c}"] = asyncio.run(load(url, images, args.imgsz, c, args.requests, args.max_seconds))
                print(f"  {backend} http c={c} done", flush=True)
            serve.delete("bench")
    finally:
        serve.shutdown()

    print(f"\n{'backend / mode':22s} {'req/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'batch':>6s} {'n':>5s}")
    for name, r in results.items():
        errors = f"  errors {r['errors']}" if r.get("errors") else ""
        print(f"{name:22s} {r['rps']:8.1f} {r['p50']:8.1f} {r['p95']:8.1f} {r['p99']:8.1f} {r['batch']:6.1f} {r['requests']:5d}{errors}")

    print("\ntargets:")
    checks = []
    for backend in backends:
        base = results[f"{backend} raw"]
        if 1 in levels:
            over = results[f"{backend} http c=1"]["p50"] - base["p50"]
            checks.append((f"{backend}: HTTP p50 at c=1 minus raw p50", f"{over:+.1f} ms", "<= +15 ms", over <= 15))
        if 16 in levels:
            ratio = results[f"{backend} http c=16"]["rps"] / base["rps"]
            checks.append((f"{backend}: HTTP req/s at c=16 / raw sequential", f"{ratio:.2f}x", ">= 1.0x", ratio >= 1.0))
    if "pt" in backends and "onnx" in backends:
        for mode in ["raw"] + ([f"http c={levels[-1]}"] if levels else []):
            ratio = results[f"onnx {mode}"]["rps"] / results[f"pt {mode}"]["rps"]
            checks.append((f"ONNX / PyTorch req/s ({mode})", f"{ratio:.2f}x", ">= 1.5x", ratio >= 1.5))
    for label, value, target, ok in checks:
        print(f"  {label:45s} {value:>9s}  target {target:10s} {'met' if ok else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps({"device": device_name, "imgsz": args.imgsz, "results": results}, indent=2))


if __name__ == "__main__":
    main()
