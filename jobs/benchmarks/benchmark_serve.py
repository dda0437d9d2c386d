"""Benchmark: what the serving stack costs per request, per ingress, with the load from a separate process.

Each server is started as a user starts it, and measured from outside:
- proxy: `facemask serve` (Serve's Python proxy with facemask.serving.proxy_guard);
- proxy-bare: the same without the guard;
- haproxy: `facemask serve --ingress haproxy` (HAProxy straight to the replica, direct ingress);
- plain: what a user writes without Ray Serve, one FastAPI app under uvicorn, the same checks,
  decoding and answer, no batching;
and, for a real model, raw: `Detector.predict([image])` called one at a time in this process.
Only the options named by --serve-args are added to `facemask serve`: its defaults are what is measured.

Backends: simulated-gpu (facemask.serving.simulated_gpu: an H100's batch latency, no CPU; what the
HTTP path costs when the model is not competing for the cores), and pt / onnx (the real
model on this machine's CPU). Payloads: the real photos of data/kaggle (mixed sizes, about 400x300),
and one 1920x1080 JPEG.

The load is wrk (C, one thread, a Lua script that rotates the bodies and reads each answer's
batch size), at each concurrency for --seconds. Its own CPU is reported apart. For every
process of the server (Serve's proxy or HAProxy, the replica, the controller, the rest of
Ray, the `facemask serve` driver; uvicorn for plain) the CPU it used during the run comes
from /proc, divided by the requests answered. Loopback only, bounded in time.

    python jobs/benchmarks/benchmark_serve.py [--backends simulated-gpu,pt] [--ingresses proxy,haproxy,plain] \
        [--payloads photos,1080p] [--concurrency 1,16,64] [--seconds 8] [--model-uri PATH.pt]

Without --model-uri it builds an untrained yolo26n with our three classes: YOLO26 has no
NMS, so its cost per image does not depend on training. Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
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
REAL = ROOT / "data" / "kaggle" / "images"  # the set `facemask data fetch --out data/kaggle` downloads
SIMULATED = "simulated-gpu"
# What each server process is, from its command line; the first match wins.
ROLES = (
    ("ray::ProxyActor", "proxy"),
    ("haproxy", "haproxy"),
    ("ray::ServeReplica", "replica"),
    ("ray::ServeController", "controller"),
)
# Targets of the simulated accelerator at the top concurrency, and of the real CPU model.
TARGET_CPU_MS, TARGET_RPS, TARGET_VS_PROXY, TARGET_BATCH, TARGET_CPU_VS_PLAIN = 2.5, 400, 4.0, 6.0, 0.71

WRK_SCRIPT = """
local paths = {%(paths)s}
local bodies = {}
for i, path in ipairs(paths) do
  local f = assert(io.open(path, "rb"))
  bodies[i] = f:read("*all")
  f:close()
end
local headers = {["Content-Type"] = "image/jpeg"}
local n = 0
answered, failed, batches = 0, 0, 0
request = function()
  n = n + 1
  return wrk.format("POST", "%(path)s", headers, bodies[(n %% #bodies) + 1])
end
response = function(status, _, body)
  if status == 200 then
    answered = answered + 1
    local b = body:match('"batch_size":%%s*(%%d+)')
    if b then batches = batches + tonumber(b) end
  else
    failed = failed + 1
  end
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, _)
  local a, f, b = 0, 0, 0
  for _, t in ipairs(threads) do
    a, f, b = a + t:get("answered"), f + t:get("failed"), b + t:get("batches")
  end
  local e = summary.errors
  io.write(string.format("FACEMASK-WRK %%d %%d %%d %%d %%.3f %%.3f %%.3f %%d\\n", a, f, b,
    summary.duration, latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.mean / 1000,
    e.connect + e.read + e.write + e.timeout))
end
"""


def untrained_weights(folder: Path) -> Path:
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from facemask.core.classes import yolo_names

    model = DetectionModel("yolo26n.yaml", nc=3, verbose=False)
    model.names = yolo_names()
    path = folder / "yolo26n-untrained.pt"
    torch.save({"model": model, "train_args": {}, "epoch": -1, "date": None}, path)
    return path


def load_images(count: int, folder: Path) -> list[bytes]:
    """JPEG bytes: the shared real images if present, else generated ones."""
    from PIL import Image

    if REAL.is_dir():
        paths = sorted(REAL.iterdir())[:count]
    else:
        from facemask.data.synth import synthesize

        synthesize(folder / "synth", images=count, seed=3)
        paths = sorted((folder / "synth" / "images").iterdir())
    out = []
    for path in paths:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def full_hd(photo: bytes) -> bytes:
    """A 1920x1080 JPEG made from a photo: the size of a phone or camera frame."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("RGB").resize((1920, 1080)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# ---------------------------------------------------------------- CPU from /proc


def process_tree(root: int) -> set[int]:
    from facemask.core.lifecycle import descendants

    return {root} | descendants(root)


def cpu_by_role(pids: set[int], named: dict[int, str]) -> dict[str, float]:
    """CPU seconds used so far by each role's processes (Linux /proc); a process that ended is not counted."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        role = named.get(pid) or next((r for key, r in ROLES if key in cmdline), "ray, other")
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


# ---------------------------------------------------------------- load


def wrk(
    url: str, bodies: list[Path], imgsz: int, concurrency: int, seconds: float, folder: Path, prefix: str = ""
) -> dict:
    """One wrk run (POST `prefix`/predict: an app's route prefix); its counts, latency and its own CPU seconds."""
    script = folder / "load.lua"
    path = f"{prefix}/predict?imgsz={imgsz}"
    script.write_text(WRK_SCRIPT % {"paths": ", ".join(json.dumps(str(p)) for p in bodies), "path": path})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "30s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in out.stdout.splitlines() if x.startswith("FACEMASK-WRK")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    answered, failed, batches, duration_us, p50, p99, mean, socket_errors = line.split()[1:]
    answered, duration = int(answered), int(duration_us) / 1e6
    return {
        "answered": answered,
        "failed": int(failed),
        "socket_errors": int(socket_errors),
        "rps": answered / duration,
        "p50": float(p50),
        "p99": float(p99),
        "mean_ms": float(mean),
        "batch": int(batches) / answered if answered else 0.0,
        "seconds": duration,
        "load_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


def measure(url: str, server_pid: int, role: str, bodies, imgsz, levels, seconds, folder) -> dict[int, dict]:
    """Every concurrency level against one running server, with the server's CPU per request by role."""
    wrk(url, bodies, imgsz, max(levels), 2, folder)  # warm connections, the batch path and the decoder
    results = {}
    for c in levels:
        pids = process_tree(server_pid)
        before = cpu_by_role(pids, {server_pid: role})
        result = wrk(url, bodies, imgsz, c, seconds, folder)
        after = cpu_by_role(pids, {server_pid: role})
        n = max(1, result["answered"])
        result["cpu_ms"] = {role: (after[role] - before.get(role, 0.0)) * 1000 / n for role in after}
        result["server_cpu_ms"] = sum(result["cpu_ms"].values())
        result["load_cpu_ms"] = result["load_cpu_s"] * 1000 / n
        results[c] = result
        print(
            f"    c={c:<3d} {result['rps']:7.1f} req/s  p50 {result['p50']:7.1f} ms  p99 {result['p99']:7.1f} ms  "
            f"batch {result['batch']:4.1f}  server CPU {result['server_cpu_ms']:5.2f} ms/req",
            flush=True,
        )
    return results


# ---------------------------------------------------------------- the servers


def plain_server(model_uri: str, backend: str, device: str, threads: int, port: int) -> None:
    """The baseline a user would write without Ray Serve: FastAPI + uvicorn, one process, no batching."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool

    from facemask.core.classes import class_counts
    from facemask.serving.request_checks import decode_image

    if backend == SIMULATED:
        from facemask.serving.simulated_gpu import SimulatedGPU

        detector = SimulatedGPU()
    else:
        from facemask.detection.detector import load_detector
        from facemask.tracking import default_tracking_uri

        store = default_tracking_uri()
        detector = load_detector(
            model_uri, device=device, backend=backend, threads=threads, warm=True, tracking_uri=store
        )
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request, imgsz: int = 640, conf: float = 0.25) -> Response:
        started = time.perf_counter()
        image = await run_in_threadpool(decode_image, await request.body(), 40_000_000)
        decoded = time.perf_counter()
        found = await run_in_threadpool(detector.predict, [image], conf, 0.7, imgsz, 300)
        done = time.perf_counter()
        detections = [d.to_dict() for d in found[0]]
        answer = {
            "detections": detections,
            "counts": class_counts(detections),
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

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise SystemExit(f"the server exited with {proc.returncode}; the end of {log}:\n" + "\n".join(said))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"the server at {url} did not answer in {timeout:.0f}s")


@contextlib.contextmanager
def server(ingress: str, backend: str, model_uri: str, args, folder: Path):
    """A server in its own process group, as a user starts it; yields (url, pid, what that process is)."""
    from facemask.core.lifecycle import stop_process_group
    from facemask.core.runtime import PROXY_ENV, free_port
    from facemask.core.settings import ServeConfig

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "FACEMASK_API_KEY")}
    if ingress == "plain":
        command = [sys.executable, __file__, "--plain-server", str(port), "--model-uri", model_uri]
        command += ["--backend", backend, "--device", args.device, "--threads", str(args.threads)]
    else:
        command = [sys.executable, "-m", "facemask.cli", "serve", "--port", str(port), "--backend", backend]
        if backend != SIMULATED:
            command += ["--model-uri", model_uri]
        chosen = "proxy" if ingress.startswith("proxy") else ingress
        if chosen != ServeConfig.ingress:  # the default ingress runs as `facemask serve` starts without options
            command += ["--ingress", chosen]
        if ingress == "proxy-bare":
            env.update(dict.fromkeys(PROXY_ENV, ""))
        command += args.serve_args.split()
    log_path = folder / f"{ingress}-{backend}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log_path)
        yield url, proc.pid, ("uvicorn" if ingress == "plain" else "serve driver")
    finally:
        # SIGTERM, not SIGINT: a benchmark started in the background hands its children SIGINT ignored.
        stop_process_group(proc, grace_s=60)
        log.close()


def raw(model_uri: str, backend: str, device: str, threads: int, images: list[bytes], imgsz: int, seconds: float):
    """The model called one image at a time in this process: the ceiling a server is compared with."""
    from PIL import Image

    from facemask.detection.detector import load_detector
    from facemask.tracking import default_tracking_uri

    store = default_tracking_uri()
    detector = load_detector(model_uri, device=device, backend=backend, threads=threads, warm=True, tracking_uri=store)
    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    for image in decoded[:3]:
        detector.predict([image], imgsz=imgsz)
    latencies, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        detector.predict([decoded[len(latencies) % len(decoded)]], imgsz=imgsz)
        latencies.append(time.perf_counter() - t)
    return {
        "rps": len(latencies) / (time.perf_counter() - started),
        "p50": statistics.median(latencies) * 1000,
        "answered": len(latencies),
    }


# ---------------------------------------------------------------- the report


def report(results: dict, levels: list[int], default_ingress: str, device_name: str) -> list[tuple]:
    roles = sorted({role for r in results.values() if "cpu_ms" in r for role in r["cpu_ms"]})
    header = f"{'backend':14s} {'payload':8s} {'ingress':11s} {'c':>3s} {'req/s':>7s} {'p50':>7s} {'p99':>7s} "
    header += f"{'batch':>5s} {'server':>6s} " + " ".join(f"{r[:10]:>10s}" for r in roles)
    header += f" {'wrk':>5s} {'fail':>5s}"
    print(f"\n[{device_name}] req/s, latency in ms, CPU in ms per answered request\n{header}")
    for (backend, payload, ingress, c), r in results.items():
        if ingress == "raw":
            print(f"{backend:14s} {payload:8s} {'raw':11s} {'1':>3s} {r['rps']:7.1f} {r['p50']:7.1f}")
            continue
        cpu = " ".join(f"{r['cpu_ms'].get(role, 0.0):10.2f}" for role in roles)
        failed = r["failed"] + r["socket_errors"]
        print(
            f"{backend:14s} {payload:8s} {ingress:11s} {c:3d} {r['rps']:7.1f} {r['p50']:7.1f} {r['p99']:7.1f} "
            f"{r['batch']:5.1f} {r['server_cpu_ms']:6.2f} {cpu} {r['load_cpu_ms']:5.2f} {failed:5d}"
        )
    print(
        "  (server: every process of the server together; wrk: the load generator's own CPU, not charged to the\n"
        "   server; fail: non-200 answers and socket errors; default ingress of `facemask serve`: "
        f"{default_ingress})"
    )
    top = max(levels)
    checks = []
    sim = {k[2]: v for k, v in results.items() if k[0] == SIMULATED and k[1] == "photos" and k[3] == top}
    if default_ingress in sim:
        d = sim[default_ingress]
        checks.append(
            (
                f"simulated-gpu, c={top}: server CPU per request ({default_ingress}, the default)",
                f"{d['server_cpu_ms']:.2f} ms",
                f"<= {TARGET_CPU_MS} ms",
                d["server_cpu_ms"] <= TARGET_CPU_MS,
            )
        )
        checks.append((f"simulated-gpu, c={top}: req/s", f"{d['rps']:.0f}", f">= {TARGET_RPS}", d["rps"] >= TARGET_RPS))
        if "proxy" in sim and default_ingress != "proxy":
            ratio = d["rps"] / sim["proxy"]["rps"]
            checks.append(
                (
                    f"simulated-gpu, c={top}: req/s / Serve's Python proxy",
                    f"{ratio:.2f}x",
                    f">= {TARGET_VS_PROXY:g}x",
                    ratio >= TARGET_VS_PROXY,
                )
            )
        checks.append(
            (
                f"simulated-gpu, c={top}: mean batch",
                f"{d['batch']:.1f}",
                f">= {TARGET_BATCH:g}",
                d["batch"] >= TARGET_BATCH,
            )
        )
    for backend in ("pt", "onnx"):
        mid = 16 if 16 in levels else top
        served = results.get((backend, "photos", default_ingress, mid))
        plain = results.get((backend, "photos", "plain", mid))
        if served and plain:
            ratio = served["rps"] / plain["rps"]
            checks.append(
                (
                    f"{backend} on CPU, c={mid}: `facemask serve` / plain uvicorn req/s",
                    f"{ratio:.2f}x",
                    f">= {TARGET_CPU_VS_PLAIN}x",
                    ratio >= TARGET_CPU_VS_PLAIN,
                )
            )
    capacity(results, top)
    print("\ntargets:")
    for label, value, target, ok in checks:
        print(f"  {label:62s} {value:>9s}  target {target:9s} {'met' if ok else 'MISSED'}")
    return checks


def capacity(results: dict, top: int) -> None:
    """Cores a node needs to keep one H100 busy, from each ingress's measured server CPU per request."""
    from facemask.core.settings import ServeConfig
    from facemask.serving.simulated_gpu import call_ms, parse_latency

    latency = parse_latency(ServeConfig.simulated_latency)
    rates = {batch: batch * 1000 / call_ms(latency, batch) for batch in (8, 32)}
    rows = [(k, r) for k, r in results.items() if k[0] == SIMULATED and k[3] == top and k[2] != "raw"]
    if not rows:
        return
    print(
        f"\ncapacity: CPU cores to keep one H100 busy (yolo26n at 640: batch 8 = {rates[8]:,.0f} images/s, "
        f"batch 32 = {rates[32]:,.0f} images/s), from the server CPU per request at c={top}"
    )
    for (_, payload, ingress, _), r in rows:
        cores = {batch: rate * r["server_cpu_ms"] / 1000 for batch, rate in rates.items()}
        print(
            f"  {ingress:11s} {payload:8s} {r['server_cpu_ms']:6.2f} ms/request: "
            f"{cores[8]:5.1f} cores at batch 8, {cores[32]:5.1f} at batch 32"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=f"{SIMULATED},pt", help="simulated-gpu, pt, onnx; comma-separated.")
    parser.add_argument(
        "--ingresses", default="proxy,haproxy,plain", help="proxy, proxy-bare, haproxy, plain; comma-separated."
    )
    parser.add_argument("--payloads", default="photos,1080p", help="photos (the real set), 1080p; comma-separated.")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument(
        "--cpu-concurrency", default="1,16", help="Levels for the real model on CPU (more only queues)."
    )
    parser.add_argument("--seconds", type=float, default=8, help="Length of each load run.")
    parser.add_argument("--model-uri", default=None)
    parser.add_argument("--imgsz", type=int, default=640, help="Inference size asked for with simulated-gpu.")
    parser.add_argument("--cpu-imgsz", type=int, default=320, help="Inference size of the real model on CPU.")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="Inference threads of raw and plain.")
    parser.add_argument(
        "--serve-args", default="", help="Extra `facemask serve` options, e.g. '--threads 2' (default: none)."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    parser.add_argument("--plain-server", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="pt", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        plain_server(args.model_uri, args.backend, args.device, args.threads, args.plain_server)
        return
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian/Ubuntu), brew install wrk (macOS)")

    from facemask.core.runtime import configure_runtime
    from facemask.core.settings import ServeConfig

    configure_runtime()
    from facemask.detection.export import export_onnx
    from facemask.tracking import default_tracking_uri

    backends = args.backends.split(",")
    ingresses = args.ingresses.split(",")
    work = Path(tempfile.mkdtemp(prefix="facemask-bench-serve-"))
    photos = load_images(args.images, work)
    bodies = {"photos": [], "1080p": []}
    for i, data in enumerate(photos):
        (work / f"photo{i}.jpg").write_bytes(data)
        bodies["photos"].append(work / f"photo{i}.jpg")
    (work / "full-hd.jpg").write_bytes(full_hd(photos[0]))
    bodies["1080p"].append(work / "full-hd.jpg")
    model_uri = args.model_uri or (str(untrained_weights(work)) if set(backends) - {SIMULATED} else SIMULATED)
    if "onnx" in backends:
        export_onnx(model_uri, imgsz=args.cpu_imgsz, tracking_uri=default_tracking_uri())
    default_ingress = ServeConfig.ingress
    device_name = f"CPU, {os.cpu_count()} cores"
    if args.device != "cpu":  # the model runs on a GPU; the HTTP path still runs on the CPU's cores
        import torch

        device_name = f"{torch.cuda.get_device_name(int(args.device))} (model), CPU {os.cpu_count()} cores"
    print(f"wrk load, {args.seconds:g} s per level; {len(photos)} photos and a 1920x1080 JPEG; on {device_name}")

    results: dict[tuple, dict] = {}
    for backend in backends:
        simulated = backend == SIMULATED
        levels = [int(c) for c in (args.concurrency if simulated else args.cpu_concurrency).split(",")]
        payloads = args.payloads.split(",") if simulated else ["photos"]
        imgsz = args.imgsz if simulated else args.cpu_imgsz
        if not simulated:
            results[(backend, "photos", "raw", 1)] = raw(
                model_uri, backend, args.device, args.threads, photos, imgsz, args.seconds
            )
        for ingress in ingresses:
            print(f"  {backend}, {ingress}:", flush=True)
            with server(ingress, backend, model_uri, args, work) as (url, pid, role):
                for payload in payloads:
                    print(f"   {payload}", flush=True)
                    measured = measure(url, pid, role, bodies[payload], imgsz, levels, args.seconds, work)
                    for c, result in measured.items():
                        results[(backend, payload, ingress, c)] = result
    all_levels = sorted({k[3] for k in results})
    checks = report(results, all_levels, default_ingress, device_name)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": device_name,
                    "default_ingress": default_ingress,
                    "results": [{"key": list(k), **v} for k, v in results.items()],
                    "targets": [{"target": t[0], "value": t[1], "goal": t[2], "met": t[3]} for t in checks],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
