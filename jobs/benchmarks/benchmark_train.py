"""Benchmark: seconds per epoch and peak RSS of one training, and our MLflow logging's overhead;
or, with --ray-workers, one model trained by 1, 2, ... Ray Train workers.

Trains yolo26n (from yolo26n.yaml) at 320 on CPU on the prepared shared real set twice in
this run: with our MLflow tracking (sqlite in a temp folder) and with tracking off. Each
training runs in its own process so peak RSS is its own.

With `--ray-workers 1,2`: the same training (same data, seed, epochs and global batch 16)
once as the plain one-process training with torch on every core, and once per worker
count as `train --ray-workers N` with the cores split between the workers (one torch
thread each on 2 cores). It reports seconds per epoch, training images per second and
val mAP50-95 after the same epochs. On a GPU cluster, add `--gpus-per-worker 1`.

    python jobs/benchmarks/benchmark_train.py [--source data/kaggle] [--epochs 2]
    python jobs/benchmarks/benchmark_train.py --ray-workers 1,2 --epochs 4 [--gpus-per-worker 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = ROOT / "data" / "kaggle"  # what `facemask data fetch --out data/kaggle` downloads

CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
from facemask.tracking import default_tracking_uri
from facemask.training.train import TrainConfig, train
data, project, epochs, imgsz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tracking = sys.argv[5] == "on"
stamps = []
def mark(trainer):
    stamps.append(time.perf_counter())
start = time.perf_counter()
train(TrainConfig(data=Path(data), model="yolo26n.yaml", epochs=epochs, imgsz=imgsz, batch=16, device="cpu", workers=1,
                  project=Path(project), run_name="bench-" + sys.argv[5], plots=False, tracking=tracking,
                  experiment="benchmark-train", tracking_uri=default_tracking_uri()),
      callbacks={"on_train_epoch_start": [mark]})
end = time.perf_counter()
# Epoch k runs from its start to the next one's; the last ends at the end of training (incl. final validation).
durations = [b - a for a, b in zip(stamps, stamps[1:] + [end])]
peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps({"epochs": durations, "peak_rss": peak_rss}))
"""


SCALING = r"""
import json, logging, os, sys, time
from pathlib import Path
from facemask.core.settings import DistributedConfig, TrainConfig
from facemask.tracking import default_tracking_uri
data, project, epochs, imgsz = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
workers, gpus = int(sys.argv[5]), float(sys.argv[6])
cfg = TrainConfig(data=Path(data), model="yolo26n.yaml", epochs=epochs, imgsz=imgsz, batch=16,
                  device="cpu" if not gpus else "auto", workers=0, project=project, run_name=f"w{workers}",
                  plots=False, tracking=False, seed=0, experiment="benchmark-train",
                  tracking_uri=default_tracking_uri())
start = time.perf_counter()
if workers == 1:
    from facemask.training.train import train
    stamps = []
    # The product as it runs: train() sizes torch's threads to the CPUs given (train.size_threads).
    result = train(cfg, callbacks={"on_fit_epoch_end": [lambda t: stamps.append(time.perf_counter())]})
    durations = [b - a for a, b in zip([start] + stamps, stamps)][:epochs]
else:
    import ray
    from facemask.training.distributed import RANKS_FILE, train_distributed
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    cpus = os.cpu_count() / workers if not gpus else 1
    result = train_distributed(cfg, DistributedConfig(workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
                                                      storage=str(project / "storage")))
    lines = [json.loads(l) for l in (project / "storage" / f"w{workers}" / RANKS_FILE).read_text().splitlines()]
    durations = [l["ranks"][0]["seconds"] for l in lines if not l["final"]]
wall = time.perf_counter() - start
print("RESULT " + json.dumps({"epochs": durations, "wall": wall, "map": result.metrics.get("val/mAP50-95")}))
"""


def scaling(data: Path, tmp: Path, epochs: int, imgsz: int, workers: list[int], gpus: float) -> None:
    images = len(list((data.parent / "images" / "train").iterdir()))
    rows = {}
    for n in workers:
        project = tmp / f"w{n}"
        project.mkdir()
        out = subprocess.run(
            [sys.executable, "-c", SCALING, str(data), str(project), str(epochs), str(imgsz), str(n), str(gpus)],
            capture_output=True,
            text=True,
            cwd=project,
        )
        if out.returncode != 0:
            raise SystemExit(f"training with {n} workers failed:\n{out.stderr[-3000:]}")
        rows[n] = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    print(
        f"yolo26n.yaml, imgsz {imgsz}, global batch 16, {epochs} epochs, {images} training images, "
        f"{'GPU' if gpus else f'CPU ({os.cpu_count()} cores)'}"
    )
    print(
        f"{'workers':>7s} {'s/epoch (each)':>34s} {'steady s/epoch':>15s} {'images/s':>9s} {'vs 1':>6s} "
        f"{'val mAP50-95':>13s} {'wall s':>7s}"
    )
    base = None
    for n, r in rows.items():
        steady = r["epochs"][1:] or r["epochs"]
        per_epoch = sum(steady) / len(steady)
        base = base or per_epoch
        each = " ".join(f"{d:6.1f}" for d in r["epochs"])
        print(
            f"{n:7d} {each:>34s} {per_epoch:15.1f} {images / per_epoch:9.1f} {base / per_epoch:5.2f}x "
            f"{r['map'] or 0:13.4f} {r['wall']:7.1f}"
        )
    print("(steady: epochs after the first, which also pays start-up; each epoch includes its validation)")
    if 1 in rows and len(rows) > 1:
        top = max(rows)

        def steady(n: int) -> float:
            epochs = rows[n]["epochs"][1:] or rows[n]["epochs"]
            return sum(epochs) / len(epochs)

        ratio = steady(1) / steady(top)
        gap = abs((rows[top]["map"] or 0) - (rows[1]["map"] or 0))
        print(
            f"target: {top} workers at least 1.0x the one-process rate: {ratio:.2f}x "
            f"({'met' if ratio >= 1.0 else 'MISSED'}); val mAP50-95 within 0.02: {gap:.4f} "
            f"({'met' if gap <= 0.02 else 'MISSED'})"
        )


def run(data: Path, project: Path, epochs: int, imgsz: int, tracking: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(project), str(epochs), str(imgsz), tracking],
        capture_output=True,
        text=True,
        env=env,
        cwd=project,
    )
    if out.returncode != 0:
        raise SystemExit(f"training ({tracking}) failed:\n{out.stderr[-3000:]}")
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--ray-workers", default=None, help="Compare these worker counts instead, e.g. 1,2.")
    parser.add_argument("--gpus-per-worker", type=float, default=0)
    args = parser.parse_args()
    if not (args.source / "annotations").is_dir():
        raise SystemExit(f"{args.source}: no VOC dataset there; pass --source DIR")
    from facemask.core.runtime import ultralytics_env
    from facemask.data.pipeline import PrepareConfig, prepare

    ultralytics_env()
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(PrepareConfig(source=args.source, out=Path(tmp) / "data", engine="local", plots=False)).data_yaml
        if args.ray_workers:
            scaling(
                data,
                Path(tmp),
                args.epochs,
                args.imgsz,
                [int(n) for n in args.ray_workers.split(",")],
                args.gpus_per_worker,
            )
            return
        results = {}
        for tracking in ("off", "on"):
            project = Path(tmp) / tracking
            project.mkdir()
            results[tracking] = run(data, project, args.epochs, args.imgsz, tracking)
    print(f"yolo26n.yaml, imgsz {args.imgsz}, batch 16, CPU, {args.epochs} epochs on the prepared real set")
    print(f"{'MLflow':8s} {'s/epoch (each)':>28s} {'mean':>7s} {'peak RSS':>9s}")
    for name, r in results.items():
        each = " ".join(f"{d:6.1f}" for d in r["epochs"])
        mean = sum(r["epochs"]) / len(r["epochs"])
        print(f"{name:8s} {each:>28s} {mean:7.1f} {r['peak_rss'] / 2**30:8.2f}G")
    off = sum(results["off"]["epochs"]) / len(results["off"]["epochs"])
    on = sum(results["on"]["epochs"]) / len(results["on"]["epochs"])
    print(f"logging overhead: {100 * (on - off) / off:+.1f}% of epoch time (target <= 3%)")


if __name__ == "__main__":
    main()
