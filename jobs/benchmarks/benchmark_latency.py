"""Benchmark: what each YOLO26 scale and size costs a frame on one CPU core, as a study's cost
objective measures it (`facemask tune --latency-target cpu-onnx`, facemask.training.cost).

For every model and size: the architecture with a 3-class head exported to ONNX at that size,
onnxruntime on one intra-op thread without spinning, the measuring thread pinned to one core,
batch 1, the median of 20 timed calls after 3 warm-up calls. Each pair is measured `--repeats`
times, the pairs interleaved, so the spread across repeats shows how steady the figure a study
ranks by is. The last column says whether the pair keeps up with a camera at `--fps` on one core.
Run it on a quiet machine: anything else on the core is counted in.

    python jobs/benchmarks/benchmark_latency.py [--models yolo26n.yaml,yolo26s.yaml] \
        [--sizes 160,320,480,640] [--repeats 3] [--fps 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="yolo26n.yaml,yolo26s.yaml")
    parser.add_argument("--sizes", default="160,320,480,640")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fps", type=float, default=15.0, help="The camera rate a pair must keep up with.")
    parser.add_argument("--json", dest="as_json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from facemask.training.cost import measure_latency

    pairs = [(m, int(s)) for m in args.models.split(",") for s in args.sizes.split(",")]
    runs: dict[tuple[str, int], list] = {pair: [] for pair in pairs}
    for _ in range(args.repeats):  # interleaved: a slow spell of the machine falls on every pair
        for model, size in pairs:
            runs[(model, size)].append(measure_latency(model, size, "cpu-onnx"))
    rows = []
    for (model, size), measured in runs.items():
        medians = [m.median_ms for m in measured]
        ms = statistics.median(medians)
        rows.append(
            {
                "model": model,
                "imgsz": size,
                "median_ms": round(ms, 2),
                "low_ms": round(min(medians), 2),
                "high_ms": round(max(medians), 2),
                "fps": round(1000 / ms, 1),
                f"keeps_up_{args.fps:g}fps": 1000 / ms >= args.fps,
                "measure_s": round(statistics.median(m.measure_s for m in measured), 2),
            }
        )
    if args.as_json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"| model | size | ms a frame (median of {args.repeats}; min-max) | frames/s | {args.fps:g} fps on one core |"
    )
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        ok = "yes" if r[f"keeps_up_{args.fps:g}fps"] else "no"
        spread = f"{r['median_ms']:.1f} ({r['low_ms']:.1f}-{r['high_ms']:.1f})"
        print(f"| {r['model']} | {r['imgsz']} | {spread} | {r['fps']:.0f} | {ok} |")
    took = statistics.median(r["measure_s"] for r in rows)
    print(f"\nOne measurement (export and timing) took a median {took:.1f} s.")


if __name__ == "__main__":
    main()
