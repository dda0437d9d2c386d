"""The raw model call on a GPU, with nothing but torch and onnxruntime: the floor any serving path sits on.

Run where Ray and Ultralytics are absent (a bare GPU box); the models are exported beforehand:
    python -c "from ultralytics import YOLO; YOLO('yolo26s.yaml').export(format='onnx', dynamic=True, simplify=False)"
    python jobs/benchmarks/gpu_model_figures.py --models DIR     # DIR holds *.onnx (dynamic) and *-<size>.torchscript

Prints, per model, backend, size and batch: ms per call (p50/p95) and images/s, each line with the card's name.
Compare with `jobs/benchmarks/benchmark_serve.py` (the same model behind Serve) to see what serving adds per request.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def timed(fn, warmup: int, iters: int, sync) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - start) * 1000)
    return out


def row(card: str, model: str, backend: str, size: int, batch: int, ms: list[float]) -> dict:
    p50 = statistics.median(ms)
    p95 = sorted(ms)[int(0.95 * (len(ms) - 1))]
    return {
        "card": card,
        "model": model,
        "backend": backend,
        "imgsz": size,
        "batch": batch,
        "p50_ms": round(p50, 3),
        "p95_ms": round(p95, 3),
        "images_per_s": round(batch * 1000 / p50, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to rehearse the run without a GPU.")
    args = parser.parse_args()
    import numpy as np
    import torch

    if args.device == "cpu":
        card, device = f"CPU, {torch.get_num_threads()} threads (a rehearsal: no GPU figure)", "cpu"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU; pass --device cpu to rehearse the run")
        card, device = torch.cuda.get_device_name(0), "cuda"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for path in sorted(args.models.glob("*.torchscript")):
        size = int(path.stem.rsplit("-", 1)[1])
        model = torch.jit.load(str(path), map_location=device).eval()
        dtypes = ((torch.float32, "torch fp32"), (torch.float16, "torch fp16"))
        for dtype, name in dtypes if device == "cuda" else dtypes[:1]:
            model = model.to(dtype)
            for batch in batches:
                x = torch.rand(batch, 3, size, size, device=device, dtype=dtype)
                with torch.inference_mode():
                    ms = timed(lambda: model(x), 10, args.iters, sync)
                rows.append(row(card, path.stem.rsplit("-", 1)[0], name, size, batch, ms))
                print(json.dumps(rows[-1]), flush=True)
        if device != "cuda":
            continue
        # One image's trip from host memory and back, as a server pays it per request.
        x_host = torch.rand(1, 3, size, size).pin_memory()
        model = model.float()
        with torch.inference_mode():
            ms = timed(
                lambda: model(x_host.to("cuda", non_blocking=True)).cpu(), 10, args.iters, torch.cuda.synchronize
            )
        rows.append(row(card, path.stem.rsplit("-", 1)[0], "torch fp32 host->gpu->host", size, 1, ms))
        print(json.dumps(rows[-1]), flush=True)
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
        print("onnxruntime is not installed: ONNX rows skipped")
    if ort is not None:
        available = ort.get_available_providers()
        sizes = sorted({int(p.stem.rsplit("-", 1)[1]) for p in args.models.glob("*.torchscript")} or {320, 640})
        print(f"onnxruntime {ort.__version__} providers: {available}")
        for provider in [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]:
            for path in sorted(args.models.glob("*.onnx")):
                session = ort.InferenceSession(str(path), providers=[provider])
                name = session.get_inputs()[0].name
                for size in sizes:
                    for batch in batches if provider != "CPUExecutionProvider" else [1]:
                        x = np.random.rand(batch, 3, size, size).astype(np.float32)
                        ms = timed(lambda: session.run(None, {name: x}), 5, args.iters, lambda: None)
                        rows.append(
                            row(
                                card,
                                path.stem,
                                f"onnxruntime {provider.replace('ExecutionProvider', '')}",
                                size,
                                batch,
                                ms,
                            )
                        )
                        print(json.dumps(rows[-1]), flush=True)
    print(f"\n[{card}] raw model calls (random weights, so speed only)")
    print(f"{'model':10s} {'backend':30s} {'imgsz':>5s} {'batch':>5s} {'p50 ms':>8s} {'p95 ms':>8s} {'img/s':>8s}")
    for r in rows:
        print(
            f"{r['model']:10s} {r['backend']:30s} {r['imgsz']:5d} {r['batch']:5d} {r['p50_ms']:8.2f} "
            f"{r['p95_ms']:8.2f} "
            f"{r['images_per_s']:8.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
