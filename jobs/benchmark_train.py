"""Benchmark: seconds per epoch and peak RSS of one training, and our MLflow logging's overhead.

Trains yolo26n (from yolo26n.yaml) at 320 on CPU on the prepared shared real set twice in
this run: with our MLflow tracking (sqlite in a temp folder) and with tracking off. Each
training runs in its own process so peak RSS is its own.

    python jobs/benchmark_train.py [--source ../shared/datasets/face-mask-detection] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "datasets" / "face-mask-detection"

CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
from facemask.train import TrainConfig, train
data, project, epochs, imgsz, tracking = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "on"
stamps = []
def mark(trainer):
    stamps.append(time.perf_counter())
start = time.perf_counter()
train(TrainConfig(data=Path(data), model="yolo26n.yaml", epochs=epochs, imgsz=imgsz, batch=16, device="cpu", workers=1,
                  project=Path(project), run_name="bench-" + sys.argv[5], plots=False, tracking=tracking,
                  experiment="benchmark-train"),
      callbacks={"on_train_epoch_start": [mark]})
end = time.perf_counter()
# Epoch k runs from its start to the next one's; the last ends at the end of training (incl. final validation).
durations = [b - a for a, b in zip(stamps, stamps[1:] + [end])]
print("RESULT " + json.dumps({"epochs": durations, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def run(data: Path, project: Path, epochs: int, imgsz: int, tracking: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(data), str(project), str(epochs), str(imgsz), tracking],
                         capture_output=True, text=True, env=env, cwd=project)
    if out.returncode != 0:
        raise SystemExit(f"training ({tracking}) failed:\n{out.stderr[-3000:]}")
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=320)
    args = parser.parse_args()
    if not (args.source / "annotations").is_dir():
        raise SystemExit(f"{args.source}: no VOC dataset there; pass --source DIR")
    from facemask.pipeline import PrepareConfig, prepare
    from facemask.runtime import ultralytics_env

    ultralytics_env()
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(PrepareConfig(source=args.source, out=Path(tmp) / "data", engine="local", plots=False)).data_yaml
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
