"""The demo: the whole flow on generated data, offline, on a local Ray cluster.

    python jobs/demo.py [--out demo] [--source DIR] [--model yolo26n.yaml] [--images N]

1. synthesise a Kaggle-layout dataset (or use --source DIR, e.g. the real one);
2. prepare it with Ray Data: stratified split, copy-paste on train only, YOLO format;
3. a Ray Tune study (Optuna TPE + ASHA), every trial a nested MLflow run;
4. the best model registered as facemask-detector, evaluated on the clean test split,
   and promoted to @champion through the gate.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facemask.cli import configure_runtime, init_ray, study_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--source", type=Path, help="A VOC dataset (Kaggle layout) instead of generated data.")
    parser.add_argument("--model", default="yolo26n.yaml", help="yolo26n.yaml trains from scratch; yolo26s.pt (online) fine-tunes.")
    parser.add_argument("--images", type=int, default=300, help="Generated images when no --source.")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    configure_runtime()
    logging.basicConfig(level=logging.WARNING)
    from facemask.pipeline import PrepareConfig, prepare
    from facemask.synth import synthesize
    from facemask.tune import StudyConfig, tune

    started = time.perf_counter()
    source = args.source
    if source is None:
        source = out / "raw"
        counts = synthesize(source, images=args.images, seed=args.seed)
        print(f"[1/4] generated {args.images} images in {source}: {counts}", flush=True)
    else:
        print(f"[1/4] using the dataset in {source}", flush=True)
    init_ray()
    prepared = prepare(PrepareConfig(source=source, out=out / "yolo", engine="ray", seed=args.seed))
    counts = {k: v["images"] for k, v in prepared.manifest["counts"].items()}
    print(f"[2/4] prepared with Ray Data: {prepared.data_yaml}\n      images {counts}", flush=True)
    print(f"[3/4] tuning: {args.trials} trials x {args.epochs} epochs of {args.model} at {args.imgsz} (Optuna TPE + ASHA)",
          flush=True)
    result = tune(StudyConfig(
        data=prepared.data_yaml, model=args.model, trials=args.trials, epochs=args.epochs, imgsz=args.imgsz, batch=16,
        cpus_per_trial=1, storage=str(out / "tune"), name="demo-study", experiment="facemask-demo", seed=args.seed,
    ))
    print("[4/4] registered, evaluated on the clean test split, gated:")
    print(study_table(result))
    uri = os.environ["MLFLOW_TRACKING_URI"]
    print(f"\ndone in {time.perf_counter() - started:.0f}s. Where to look next:")
    print(f"  MLflow UI:   .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000   (then http://127.0.0.1:5000)")
    print(f"  the data:    {out / 'yolo' / 'class_distribution.png'}, {out / 'yolo' / 'synthetic_samples.jpg'}")
    print(f"  the study:   {out / 'tune' / 'demo-study'}")
    print(f"  the model:   models:/facemask-detector@champion  (facemask evaluate --model-uri ... --data {prepared.data_yaml})")


if __name__ == "__main__":
    main()
