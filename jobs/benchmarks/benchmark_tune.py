"""Benchmark: the same Optuna trials with ASHA and run to completion, in one run.

Both studies use the same seed, so TPE's random start-up suggests the same configs; the
table compares total trial-epochs, wall time and the best val mAP50-95, and the cores the whole
machine kept busy over each study (/proc/stat): with 1-CPU trials on 2 cores, two trials run side
by side, and each sizes torch's threads to its one CPU (`train.size_threads`).

    python jobs/benchmarks/benchmark_tune.py [--trials 6] [--epochs 6] [--images 300] [--imgsz 160]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--cpus-per-trial", type=float, default=1)
    parser.add_argument("--reduction-factor", type=float, default=2)
    args = parser.parse_args()

    from facemask.core.runtime import configure_runtime, init_ray, machine_busy_s
    from facemask.data.pipeline import PrepareConfig, prepare
    from facemask.data.synth import synthesize
    from facemask.training.tune import StudyConfig, tune

    configure_runtime()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        synthesize(Path(tmp) / "raw", images=args.images, seed=1)
        data = prepare(
            PrepareConfig(source=Path(tmp) / "raw", out=Path(tmp) / "data", engine="local", plots=False)
        ).data_yaml
        init_ray()
        rows = {}
        for label, asha in (("ASHA", True), ("no early stop", False)):
            started, busy = time.perf_counter(), machine_busy_s()
            result = tune(
                StudyConfig(
                    data=data,
                    model="yolo26n.yaml",
                    trials=args.trials,
                    epochs=args.epochs,
                    imgsz=args.imgsz,
                    batch=16,
                    cpus_per_trial=args.cpus_per_trial,
                    storage=str(Path(tmp) / "studies"),
                    name=label.replace(" ", "-"),
                    asha=asha,
                    register=False,
                    experiment="benchmark-tune",
                    grace_period=1,
                    reduction_factor=args.reduction_factor,
                    tracking_uri=store,
                )
            )
            wall = time.perf_counter() - started
            rows[label] = (
                result.trial_epochs,
                wall,
                result.best_val.get("mAP50-95", float("nan")),
                result.counts,
                (machine_busy_s() - busy) / wall,
            )
    print(
        f"{args.trials} trials x up to {args.epochs} epochs, yolo26n.yaml at {args.imgsz}, "
        f"{args.images} generated images"
    )
    print(f"{'study':14s} {'trial-epochs':>12s} {'wall s':>8s} {'best val mAP50-95':>18s} {'cores busy':>10s}  trials")
    for label, (epochs, wall, best, counts, cores) in rows.items():
        print(f"{label:14s} {epochs:12d} {wall:8.0f} {best:18.4f} {cores:10.2f}  {counts}")
    a, b = rows["ASHA"], rows["no early stop"]
    print(
        f"ASHA used {100 * a[0] / b[0]:.0f}% of the trial-epochs (target <= 50%), "
        f"best mAP50-95 differs by {a[2] - b[2]:+.4f} (target within 0.02)"
    )


if __name__ == "__main__":
    main()
