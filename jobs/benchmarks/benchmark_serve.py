"""Benchmark: the Serve endpoint against a plain uvicorn app and the raw model call, PyTorch and ONNX.

In one run, on the same images and the same model:
1. raw: `Detector.predict([image])` called sequentially in this process;
2. plain: what a user would write instead of Ray Serve: one FastAPI app under uvicorn, in
   its own process, with the same input checks, decoding and answer, the model called in a
   worker thread, no batching;
3. serve: the Serve application (one deployment, `@serve.batch`), through Serve's proxy with
   facemask.proxy_guard or, with --ingress haproxy, through HAProxy straight to the replica
   (direct ingress); serve-unguarded: the same through the bare proxy, on a fresh cluster;
at concurrency 1, 4 and 16, for the PyTorch backend and for the ONNX export (onnxruntime).
It prints requests/s and p50/p95/p99 latency, where a request's time goes (from the
answers' own timings), then the ratios against their targets.
Loopback only, and bounded: --requests per level and --max-seconds per level.

    python jobs/benchmarks/benchmark_serve.py [--model-uri PATH.pt|models:/...] [--imgsz 320] [--requests 128] \
        [--ingress proxy|haproxy]

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Module level: FastAPI resolves the plain app's (postponed) annotations from these globals.
from fastapi import Request
from fastapi.responses import Response

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ROOT = Path(__file__).resolve().parents[2]
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

    return {
        "requests": len(latencies),
        "rps": len(latencies) / seconds,
        "p50": pct(50),
        "p95": pct(95),
        "p99": pct(99),
        "batch": statistics.mean(batch_sizes) if batch_sizes else 1.0,
    }


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
    parts: dict[str, list[float]] = {"decode_ms": [], "queue_ms": [], "inference_ms": [], "total_ms": []}
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
            timings = r.json()["timings"]
            batches.append(timings["batch_size"])
            for key in parts:
                parts[key].append(timings[key])

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        for b in images[: max(3, concurrency)]:  # warm every connection and the batch path
            await client.post("/predict", params={"imgsz": imgsz}, content=b)
        started = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        seconds = time.perf_counter() - started
    if not latencies:
        raise SystemExit(f"every request at concurrency {concurrency} failed: {errors}")
    result = stats(latencies, seconds, batches)
    result["errors"] = errors
    # Where a request's time goes: the server's own parts, and the rest (client, HTTP, proxy hops).
    result["parts"] = {key: statistics.median(values) for key, values in parts.items()}
    result["parts"]["outside_ms"] = result["p50"] - result["parts"]["total_ms"]
    return result


def proxy_cpu_s() -> float | None:
    """CPU seconds used so far by this machine's Serve proxy processes (Linux /proc), or None."""
    total, found = 0.0, False
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            if b"ray::ProxyActor" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total, found = total + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), True
    return total if found else None


def mean_of_rounds(rounds: list[dict]) -> dict:
    """One result from repeated passes: the mean of each figure and of each part of a request's time."""
    merged = dict(rounds[0])
    for key in ("rps", "p50", "p95", "p99", "batch", "proxy_ms"):
        if all(r.get(key) is not None for r in rounds):
            merged[key] = statistics.mean(r[key] for r in rounds)
    merged["parts"] = {key: statistics.mean(r["parts"][key] for r in rounds) for key in rounds[0]["parts"]}
    merged["requests"] = sum(r["requests"] for r in rounds)
    merged["errors"] = {}
    for r in rounds:
        for status, count in r["errors"].items():
            merged["errors"][status] = merged["errors"].get(status, 0) + count
    return merged


def plain_server(model_uri: str, backend: str, device: str, threads: int, port: int) -> None:
    """The baseline a user would write without Ray Serve: FastAPI + uvicorn, one process, no batching."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool

    from facemask.classes import CLASS_NAMES
    from facemask.detector import load_detector
    from facemask.request_checks import decode_image

    detector = load_detector(model_uri, device=device, backend=backend, threads=threads, warm=True)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request, imgsz: int = 640, conf: float = 0.25) -> Response:
        started = time.perf_counter()
        image = await run_in_threadpool(decode_image, await request.body(), 40_000_000)
        decoded = time.perf_counter()
        found = await run_in_threadpool(detector.predict, [image], conf, 0.7, imgsz, 300)
        done = time.perf_counter()
        detections = [d.to_dict() for d in found[0]]
        counts = dict.fromkeys(CLASS_NAMES, 0)
        for d in detections:
            counts[d["label"]] += 1
        answer = {
            "detections": detections,
            "counts": counts,
            "image": {"width": image.width, "height": image.height},
            "timings": {
                "decode_ms": (decoded - started) * 1000,
                "queue_ms": 0.0,
                "inference_ms": (done - decoded) * 1000,
                "total_ms": (time.perf_counter() - started) * 1000,
                "batch_size": 1,
            },
        }
        return Response(json.dumps(answer), media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def wait_ready(url: str, proc, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the plain server exited with {proc.returncode}")
        try:
            httpx.get(f"{url}/docs", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit(f"the plain server at {url} did not start in {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", default=None)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--requests", type=int, default=128, help="Requests per level.")
    parser.add_argument("--max-seconds", type=float, default=60, help="Time bound per level.")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--device", default="cpu", help="cpu, or a GPU index for the PyTorch backend.")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="Inference threads (raw, plain, each replica)."
    )
    parser.add_argument("--replicas", type=int, default=1, help="Serve replicas.")
    parser.add_argument(
        "--replica-threads", type=int, default=None, help="Inference threads per replica (default: threads / replicas)."
    )
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-s", type=float, default=0.0)
    parser.add_argument(
        "--ingress",
        choices=["proxy", "haproxy"],
        default="proxy",
        help="Serve's proxy, or HAProxy in front of the replica's own HTTP server (direct ingress).",
    )
    parser.add_argument(
        "--guard",
        choices=["both", "on", "off"],
        default="both",
        help="Serve's proxy with facemask.proxy_guard, without it, or both (on a fresh cluster each).",
    )
    parser.add_argument("--guard-rounds", type=int, default=2, help="With --guard both: passes of each, alternating.")
    parser.add_argument("--backends", default="pt,onnx")
    parser.add_argument("--skip", default="", help="Modes to leave out, comma-separated: plain, serve.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    parser.add_argument("--plain-server", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="pt", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        plain_server(args.model_uri, args.backend, args.device, args.threads, args.plain_server)
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    backends = args.backends.split(",")
    skip = set(filter(None, args.skip.split(",")))

    from facemask.runtime import PROXY_ENV, configure_runtime, free_port, init_ray

    configure_runtime()
    import torch

    from facemask.detector import load_detector
    from facemask.export import export_onnx

    work = Path(tempfile.mkdtemp(prefix="facemask-bench-serve-"))
    model_uri = args.model_uri or str(untrained_weights(work))
    images = load_images(args.images, work)
    if "onnx" in backends:
        export_onnx(model_uri, imgsz=args.imgsz)
    device_name = (
        torch.cuda.get_device_name(0)
        if args.device != "cpu" and torch.cuda.is_available()
        else f"CPU ({os.cpu_count()} cores)"
    )
    print(
        f"model {model_uri}, imgsz {args.imgsz}, {len(images)} images, {args.requests} requests per "
        f"level, on {device_name}, "
        f"Serve ingress: {args.ingress}",
        flush=True,
    )

    results: dict[str, dict] = {}
    for backend in backends:
        detector = load_detector(model_uri, device=args.device, backend=backend, threads=args.threads)
        results[f"{backend} raw"] = raw(detector, images, args.imgsz, args.requests, args.max_seconds)
        del detector
        print(f"  {backend} raw done", flush=True)
        if "plain" in skip:
            continue
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--plain-server",
                str(port),
                "--model-uri",
                model_uri,
                "--backend",
                backend,
                "--device",
                args.device,
                "--threads",
                str(args.threads),
            ]
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc)
            for c in levels:
                results[f"{backend} plain c={c}"] = asyncio.run(
                    load(f"http://127.0.0.1:{port}", images, args.imgsz, c, args.requests, args.max_seconds)
                )
            print(f"  {backend} plain done", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    if "serve" not in skip:
        # Serve's proxy with facemask.proxy_guard (what `facemask serve` runs), and the bare proxy,
        # each on a fresh cluster, alternating for --guard-rounds: a second cluster in one process
        # runs a few percent slower than the first, so one pass each would charge that to one side.
        # HAProxy ingress has no Python proxy to guard.
        modes = {"on": ["serve"], "off": ["serve-unguarded"], "both": ["serve-unguarded", "serve"]}[
            "on" if args.ingress == "haproxy" else args.guard
        ]
        import ray
        from ray import serve

        from facemask.serving import AppArgs, build_app

        rounds: dict[str, list[dict]] = {}
        for mode in modes * (args.guard_rounds if len(modes) > 1 else 1):
            for key, value in PROXY_ENV.items():
                os.environ[key] = value if mode == "serve" else ""
            init_ray(serving=True, ingress=args.ingress)  # also Serve's throughput settings (SERVE_ENV)
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            url = f"http://127.0.0.1:{port}"
            try:
                for backend in backends:
                    gpus = 1 if backend == "pt" and args.device != "cpu" else 0
                    serve.run(
                        build_app(
                            AppArgs(
                                model_uri=model_uri,
                                backend=backend,
                                device=args.device,
                                threads=args.replica_threads or max(1, args.threads // args.replicas),
                                max_batch_size=args.max_batch_size,
                                batch_wait_timeout_s=args.batch_wait_s,
                                deployment_options={
                                    "num_replicas": args.replicas,
                                    "ray_actor_options": {"num_cpus": 0.5, "num_gpus": gpus / args.replicas},
                                    "max_ongoing_requests": 64,
                                    "max_queued_requests": 256,
                                },
                            )
                        ),
                        name="bench",
                        route_prefix="/",
                    )
                    for c in levels:
                        before = proxy_cpu_s()
                        result = asyncio.run(load(url, images, args.imgsz, c, args.requests, args.max_seconds))
                        after = proxy_cpu_s()
                        # Includes the warm-up requests `load` sends first; a slight over-estimate.
                        result["proxy_ms"] = (after - before) * 1000 / result["requests"] if after is not None else None
                        rounds.setdefault(f"{backend} {mode} c={c}", []).append(result)
                    print(f"  {backend} {mode} done", flush=True)
                    serve.delete("bench")
            finally:
                serve.shutdown()
                ray.shutdown()
        for backend in backends:
            for mode in dict.fromkeys(modes):
                for c in levels:
                    results[f"{backend} {mode} c={c}"] = mean_of_rounds(rounds[f"{backend} {mode} c={c}"])

    print(
        f"\n[{device_name}] {'backend / mode':20s} {'req/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} "
        f"{'p99 ms':>8s} {'batch':>6s} "
        f"{'decode':>7s} {'queue':>7s} {'model':>7s} {'outside':>8s} {'proxy':>6s} {'n':>5s}"
    )
    for name, r in results.items():
        errors = f"  errors {r['errors']}" if r.get("errors") else ""
        p = r.get("parts") or {}
        parts = (
            f"{p['decode_ms']:7.1f} {p['queue_ms']:7.1f} {p['inference_ms']:7.1f} {p['outside_ms']:8.1f}"
            if p
            else f"{'':7s} {'':7s} {'':7s} {'':8s}"
        )
        proxy = f"{r['proxy_ms']:6.1f}" if r.get("proxy_ms") is not None else f"{'':6s}"
        print(
            f"{' ' * (len(device_name) + 3)}{name:20s} {r['rps']:8.1f} {r['p50']:8.1f} {r['p95']:8.1f} {r['p99']:8.1f} "
            f"{r['batch']:6.1f} {parts} {proxy} {r['requests']:5d}{errors}"
        )
    print(
        "  (decode, queue, model: the server's own medians per request; outside: client p50 minus the server's total,\n"
        "   i.e. HTTP, the proxy and, for Serve, the hop to the replica; proxy: CPU ms per request in Serve's proxy\n"
        "   process; with --guard both, serve and serve-unguarded are means over --guard-rounds alternating passes)"
    )

    print("\ntargets:")
    checks = []
    top = max(levels)
    for backend in backends:
        base = results[f"{backend} raw"]
        serve_at = {c: results.get(f"{backend} serve c={c}") for c in levels}
        if serve_at.get(1):
            over = serve_at[1]["p50"] - base["p50"]
            checks.append((f"{backend}: Serve p50 at c=1 minus raw p50", f"{over:+.1f} ms", "<= +5 ms", over <= 5))
        if serve_at.get(top):
            ratio = serve_at[top]["rps"] / base["rps"]
            checks.append(
                (f"{backend}: Serve req/s at c={top} / raw sequential", f"{ratio:.2f}x", ">= 0.9x", ratio >= 0.9)
            )
            plain = results.get(f"{backend} plain c={top}")
            if plain:
                ratio = serve_at[top]["rps"] / plain["rps"]
                checks.append(
                    (f"{backend}: Serve / plain uvicorn req/s at c={top}", f"{ratio:.2f}x", ">= 0.95x", ratio >= 0.95)
                )
            tail = serve_at[top]["p99"] / serve_at[top]["p50"]
            checks.append((f"{backend}: Serve p99 / p50 at c={top}", f"{tail:.2f}x", "<= 2x", tail <= 2))
        bare = {c: results.get(f"{backend} serve-unguarded c={c}") for c in levels}
        if serve_at.get(top) and bare.get(top) and serve_at[top].get("proxy_ms") and bare[top].get("proxy_ms"):
            extra = serve_at[top]["proxy_ms"] - bare[top]["proxy_ms"]
            checks.append(
                (f"{backend}: proxy guard's CPU per request, c={top}", f"{extra:+.2f} ms", "<= +0.5 ms", extra <= 0.5)
            )
        if serve_at.get(1) and bare.get(1):
            # Time outside the server (HTTP, the proxy, the hop), so the model call's own noise is left out.
            over = serve_at[1]["parts"]["outside_ms"] - bare[1]["parts"]["outside_ms"]
            checks.append(
                (f"{backend}: proxy guard's latency outside the server, c=1", f"{over:+.1f} ms", "<= +1 ms", over <= 1)
            )
        if serve_at.get(top) and bare.get(top):
            ratio = serve_at[top]["rps"] / bare[top]["rps"]
            checks.append(
                (
                    f"{backend}: Serve req/s with / without the guard, c={top}",
                    f"{ratio:.2f}x",
                    ">= 0.97x",
                    ratio >= 0.97,
                )
            )
        plain1 = results.get(f"{backend} plain c=1")
        if plain1:
            checks.append(
                (
                    f"{backend}: plain uvicorn p50 at c=1 minus raw p50",
                    f"{plain1['p50'] - base['p50']:+.1f} ms",
                    "(reference)",
                    True,
                )
            )
    for label, value, target, ok in checks:
        print(f"  {label:48s} {value:>9s}  target {target:11s} {'met' if ok else 'MISSED'}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": device_name, "imgsz": args.imgsz, "ingress": args.ingress, "results": results}, indent=2
            )
        )


if __name__ == "__main__":
    main()
