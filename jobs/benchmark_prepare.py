"""Benchmark: images/s of `prepare` with --engine ray against --engine local, in one run.

Each engine runs in a fresh process (so neither inherits the other's imports or
workers), several times: the first call pays the cold start (imports, Ray workers), the
later ones show steady state. Peak memory is the PSS of the whole process tree (driver,
Ray services and workers), sampled every 0.5 s.

    python jobs/benchmark_prepare.py [--source ../shared/datasets/face-mask-detection]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "datasets" / "face-mask-detection"

CHILD = r"""
import json, logging, sys, time
from pathlib import Path
from facemask.pipeline import PrepareConfig, prepare
engine, source, out, repeats = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
if engine == "ray":
    import ray
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
runs = []
for i in range(repeats):
    t = time.perf_counter()
    result = prepare(PrepareConfig(source=Path(source), out=out / f"run{i}", engine=engine, plots=False))
    runs.append({"seconds": time.perf_counter() - t, "images": result.images,
                 "fingerprint": result.manifest["fingerprint"], "outputs": result.manifest["outputs"]["sha256"]})
print("RESULT " + json.dumps(runs))
"""


def tree_pss(pid: int) -> int:
    """Proportional set size of a process and its descendants: shared pages counted once."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return total


def run_engine(engine: str, source: Path, out: Path, repeats: int) -> dict:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, engine, str(source), str(out), str(repeats)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_pss(proc.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{engine} engine failed with exit code {proc.returncode}")
    runs = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
    return {"runs": runs, "peak_pss": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.source / "annotations").is_dir():
        raise SystemExit(f"{args.source}: no VOC dataset there; pass --source DIR (or `facemask data synth` one)")
    with tempfile.TemporaryDirectory() as tmp:
        results = {e: run_engine(e, args.source, Path(tmp) / e, args.repeats) for e in ("local", "ray")}
    same = results["local"]["runs"][0]["outputs"] == results["ray"]["runs"][0]["outputs"]
    print(f"source: {args.source}  images written per run: {results['local']['runs'][0]['images']}")
    print(f"{'engine':8s} {'run':>4s} {'seconds':>8s} {'images/s':>9s} {'peak PSS':>9s}")
    for engine, r in results.items():
        for i, run in enumerate(r["runs"]):
            ips = run["images"] / run["seconds"]
            label = "cold" if i == 0 else "warm"
            print(f"{engine:8s} {label:>4s} {run['seconds']:8.2f} {ips:9.1f} {r['peak_pss'] / 2**30:8.2f}G")
    def best(engine: str, runs: slice) -> float:
        return min(r["seconds"] for r in results[engine]["runs"][runs])

    print(f"ray/local speed-up, cold: {best('local', slice(0, 1)) / best('ray', slice(0, 1)):.2f}x")
    if args.repeats > 1:
        print(f"ray/local speed-up, warm (best of {args.repeats - 1}): {best('local', slice(1, None)) / best('ray', slice(1, None)):.2f}x")
    print(f"identical outputs across engines: {same}")


if __name__ == "__main__":
    main()
