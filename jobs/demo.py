"""The demo: the whole flow on generated data, offline, on a local Ray cluster.

    python jobs/demo.py [--out demo] [--source DIR] [--weights yolo26n.yaml] [--images N]

1. synthesise a Kaggle-layout dataset (or use --source DIR, e.g. the real one);
2. prepare it with Ray Data: stratified split, copy-paste on train only, YOLO format;
3. a Ray Tune study (Optuna TPE + ASHA), every trial a nested MLflow run;
4. the best model registered as facemask-detector, evaluated on the clean test split,
   and promoted to @champion through the gate;
5. Ray Serve up with the champion, one held-out test image sent over HTTP, its detections
   printed (--keep-serving leaves the endpoint and its page up until Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facemask.cli import study_table  # noqa: E402
from facemask.core.runtime import configure_runtime, free_port, init_ray  # noqa: E402
from facemask.core.settings import ServeConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--source", type=Path, help="A VOC dataset (Kaggle layout) instead of generated data.")
    parser.add_argument(
        "--weights",
        "--model",
        dest="model",
        default="yolo26n.yaml",
        help="yolo26n.yaml trains from scratch; yolo26s.pt (online) fine-tunes.",
    )
    parser.add_argument("--images", type=int, default=300, help="Generated images when no --source.")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=160)
    retrain = "Retrain the best trial's settings this long before registering (0: keep the trial's weights)."
    parser.add_argument("--final-epochs", type=int, default=12, help=retrain)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=8000, help="Serve's port (the next free one if taken).")
    parser.add_argument("--keep-serving", action="store_true", help="Leave the endpoint up until Ctrl-C.")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # In the environment too: a `facemask` command run from this shell afterwards finds the same store.
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    configure_runtime()
    logging.basicConfig(level=logging.WARNING)
    from facemask.data.pipeline import PrepareConfig, prepare
    from facemask.data.synth import synthesize
    from facemask.tracking import default_tracking_uri
    from facemask.training.tune import StudyConfig, tune

    tracking_uri = default_tracking_uri()

    started = time.perf_counter()
    source = args.source
    if source is None:
        source = out / "raw"
        counts = synthesize(source, images=args.images, seed=args.seed)
        print(f"[1/5] generated {args.images} images in {source}: {counts}", flush=True)
    else:
        print(f"[1/5] using the dataset in {source}", flush=True)
    init_ray(serving=True, ingress=ServeConfig.ingress)  # the endpoint as `facemask serve` runs it
    prepared = prepare(PrepareConfig(source=source, out=out / "yolo", engine="ray", seed=args.seed))
    counts = {k: v["images"] for k, v in prepared.manifest["counts"].items()}
    print(f"[2/5] prepared with Ray Data: {prepared.data_yaml}\n      images {counts}", flush=True)
    print(
        f"[3/5] tuning: {args.trials} trials x {args.epochs} epochs of {args.model} at {args.imgsz} "
        "(Optuna TPE + ASHA)",
        flush=True,
    )
    result = tune(
        StudyConfig(
            data=prepared.data_yaml,
            model=args.model,
            trials=args.trials,
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=16,
            cpus_per_trial=1,
            storage=str(out / "tune"),
            name="demo-study",
            experiment="facemask-demo",
            seed=args.seed,
            final_epochs=args.final_epochs,
            tracking_uri=tracking_uri,
        )
    )
    print("[4/5] registered, evaluated on the clean test split, gated:")
    print(study_table(result))
    model_uri = (
        "models:/facemask-detector@champion"
        if result.promoted or result.version is None
        else f"models:/facemask-detector/{result.version}"
    )
    url, query = serve_and_query(
        model_uri, tracking_uri, prepared.data_yaml.parent / "images" / "test", args.port, args.imgsz
    )
    if not args.keep_serving:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()  # before the summary, so that Ray's shutdown lines do not follow it
    print(f"\ndone in {time.perf_counter() - started:.0f}s. Where to look next:")
    print(
        f"  MLflow UI:   .venv/bin/mlflow ui --backend-store-uri {tracking_uri} --port 5000   (then http://127.0.0.1:5000)"
    )
    print(f"  the data:    {out / 'yolo' / 'class_distribution.png'}, {out / 'yolo' / 'synthetic_samples.jpg'}")
    print(f"  the study:   {out / 'tune' / 'demo-study'}")
    print(f"  the model:   {model_uri}  (facemask evaluate --model-uri ... --data {prepared.data_yaml})")
    if args.keep_serving:
        print(f"  the page:    {url}/   API docs {url}/docs   (Ctrl-C stops)")
    else:
        print(f"  the page:    {url}/ while `make serve` runs (or rerun with DEMO_ARGS=--keep-serving)")
    print(f"\n[5/5] {query}", flush=True)
    if args.keep_serving:
        from facemask.serving.lifecycle import stop_serving, wait_for_stop

        try:
            wait_for_stop()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (init_ray's handle_stop_signals)
            pass
        finally:
            stop_serving()


def serve_and_query(model_uri: str, tracking_uri: str, test_images: Path, port: int, imgsz: int) -> tuple[str, str]:
    """Start Serve with the model and send one held-out test image over HTTP: (URL, the answer as text)."""
    from facemask.cli import detections_table
    from facemask.serving import AppArgs
    from facemask.serving.client import Client
    from facemask.serving.lifecycle import start_serving

    args = AppArgs(
        model_uri=model_uri, tracking_uri=tracking_uri, deployment_options={"ray_actor_options": {"num_cpus": 1}}
    )
    url = start_serving(args, port=free_port(port), log_level="WARNING")
    image = sorted(test_images.iterdir())[0]
    # A few epochs from scratch leave confidences low; 0.1 shows what the model found.
    result = Client(url).predict(image, conf=0.1, max_det=10, imgsz=imgsz)
    return url, (
        f"Ray Serve at {url}: POST /predict with the held-out test image {image.name} (conf 0.1):\n"
        + detections_table(result)
    )


if __name__ == "__main__":
    main()
