"""The `facemask` command. Each command parses, sets up global state, calls one core function."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import click

KAGGLE_DATASET = "andrewmvd/face-mask-detection"


def init_ray(serving: bool = False) -> None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`), else start a local one.

    serving: a local cluster started here also gets Serve's throughput settings (its proxy
    inherits them; replicas get them from the deployments either way).
    """
    if serving:
        from facemask.serving import SERVE_ENV

        for key, value in SERVE_ENV.items():
            os.environ.setdefault(key, value)
    # Seen under `ray job submit` here: once ray.init() has run, importing torch can abort
    # with "oneMKL FATAL ERROR: Cannot load libtorch_cpu.so". Loading torch first avoids it.
    import torch  # noqa: F401
    import ray

    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or None,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )


def configure_runtime() -> None:
    """Process-wide settings for commands that train or track.

    MLflow's client retries a dead server for minutes by default; a training must not
    stall that long on logging, so retries are bounded unless the user set them.
    """
    from facemask.train import ultralytics_env

    ultralytics_env()
    # Ultralytics logs to stdout; keep stdout for our results (evaluate --json must parse).
    from ultralytics.utils import LOGGER

    for handler in LOGGER.handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # Tune warns on every snapshot of short trials; the snapshots are wanted (resume), the warning is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # MLflow prints a "View run at <server>" line per run; a study's server is gone after it, so the links mislead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _fail(message: str) -> None:
    if os.environ.get("FACEMASK_DEBUG"):
        import traceback

        traceback.print_exc()
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log progress at INFO level.")
def main(verbose: bool) -> None:
    """Train, tune, track and serve a YOLO26 face-mask detector on Ray."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("facemask").setLevel(logging.INFO)


@main.group()
def data() -> None:
    """Get, generate and prepare datasets."""


@data.command("synth")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write images/ and annotations/.")
@click.option("--images", default=120, show_default=True, help="Number of images.")
@click.option("--seed", default=0, show_default=True)
def data_synth(out: Path, images: int, seed: int) -> None:
    """Generate a procedural face-mask dataset in the Kaggle VOC layout."""
    from facemask.synth import synthesize

    try:
        counts = synthesize(out, images=images, seed=seed)
    except ValueError as exc:
        _fail(str(exc))
    click.echo(f"wrote {images} images to {out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


@data.command("fetch")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for images/ and annotations/.")
def data_fetch(out: Path) -> None:
    """Download the Kaggle Face Mask Detection dataset (needs network and kagglehub)."""
    hint = f"use `facemask data synth --out {out}` for demo data, or pass --source DIR to prepare a local copy"
    try:
        import kagglehub
    except ImportError:
        _fail(f"kagglehub is not installed (pip install 'facemask[fetch]'); or {hint}")
    try:
        downloaded = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as exc:  # kagglehub raises many network error types
        _fail(f"could not download {KAGGLE_DATASET} ({type(exc).__name__}); offline? {hint}")
    for part in ("annotations", "images"):
        if not (downloaded / part).is_dir():
            _fail(f"{downloaded} has no {part}/ folder; the Kaggle layout changed?")
        shutil.copytree(downloaded / part, out / part, dirs_exist_ok=True)
    click.echo(f"fetched {KAGGLE_DATASET} to {out}")


def _parse_split(value: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected three numbers like 0.7,0.2,0.1") from None
    if len(parts) != 3:
        raise click.BadParameter(f"{value!r}: expected three numbers like 0.7,0.2,0.1")
    return parts  # type: ignore[return-value]


def _parse_pastes(values: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    out = []
    for value in values:
        name, _, count = value.partition("=")
        if not count.isdigit():
            raise click.BadParameter(f"{value!r}: expected CLASS=COUNT, e.g. mask_weared_incorrect=300")
        out.append((name, int(count)))
    return tuple(out)


@data.command("prepare")
@click.option("--source", type=click.Path(path_type=Path), required=True, help="VOC folder with annotations/ and images/.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder for the YOLO dataset.")
@click.option("--engine", type=click.Choice(["ray", "local"]), default="ray", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--split", "split_", default="0.7,0.2,0.1", show_default=True, help="train,val,test fractions.")
@click.option("--synthetic-classes", default="without_mask,mask_weared_incorrect", show_default=True,
              help="Classes to paste, comma-separated.")
@click.option("--balance", type=float, default=0.5, show_default=True,
              help="Paste until each chosen class reaches this fraction of the majority class (0: no pasting).")
@click.option("--pastes", multiple=True, help="Explicit CLASS=COUNT pastes; overrides --balance. Repeatable.")
@click.option("--pastes-per-image", default=4, show_default=True)
@click.option("--blend", type=click.Choice(["overlay", "feather", "poisson"]), default="feather", show_default=True)
@click.option("--no-plots", is_flag=True, help="Skip class_distribution.png and synthetic_samples.jpg.")
def data_prepare(source, out, engine, seed, split_, synthetic_classes, balance, pastes, pastes_per_image, blend, no_plots):
    """Parse VOC, split stratified, copy-paste on train only, write YOLO data.yaml + manifest.json."""
    from facemask.augment import AugmentConfig
    from facemask.pipeline import PrepareConfig, prepare
    from facemask.voc import EmptyDatasetError

    try:
        cfg = PrepareConfig(
            source=source,
            out=out,
            engine=engine,
            seed=seed,
            split=_parse_split(split_),
            augment=AugmentConfig(
                classes=tuple(c for c in synthetic_classes.split(",") if c),
                balance_ratio=balance,
                pastes_per_class=_parse_pastes(pastes),
                pastes_per_image=pastes_per_image,
                blend=blend,
            ),
            plots=not no_plots,
        ).validate()
    except (ValueError, click.BadParameter) as exc:
        _fail(str(exc))
    if engine == "ray":
        init_ray()
    try:
        result = prepare(cfg)
    except (FileNotFoundError, EmptyDatasetError) as exc:
        _fail(str(exc))
    m = result.manifest
    click.echo(f"data.yaml: {result.data_yaml}")
    click.echo(f"manifest:  {result.manifest_path}  fingerprint {m['fingerprint'][:12]}")
    for split, c in m["counts"].items():
        objects = ", ".join(f"{k}={v['original']}+{v['pasted']}" for k, v in c["objects"].items())
        click.echo(f"  {split:5s} images {c['images']['original']}+{c['images']['synthetic']} synthetic; objects (original+pasted) {objects}")
    problems = m["problems"]
    if problems["items"]:
        click.echo(f"  problems: {json.dumps(problems['counts'])} (details in manifest.json)")


def _parse_overrides(values: tuple[str, ...]) -> dict:
    """Ultralytics train args given as key=value; values parsed as YAML (0.01, true, [1,2])."""
    import yaml

    out = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected key=value, e.g. lr0=0.005 or mosaic=0.5")
        out[key] = yaml.safe_load(raw)
    return out


@main.command("train", context_settings={"ignore_unknown_options": True})
@click.option("--data", type=click.Path(path_type=Path), required=True, help="data.yaml from `facemask data prepare`.")
@click.option("--model", default="yolo26s.pt", show_default=True, help="yolo26s.pt (pretrained), yolo26n.yaml (scratch) or a path.")
@click.option("--epochs", default=50, show_default=True)
@click.option("--imgsz", default=640, show_default=True)
@click.option("--batch", default=8, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, 0 or 0,1 (several GPUs of one node).")
@click.option("--experiment", default="facemask", show_default=True)
@click.option("--name", "run_name", default=None, help="MLflow run name (and output folder).")
@click.option("--project", type=click.Path(path_type=Path), default=Path("runs/train"), show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--workers", default=2, show_default=True, help="Dataloader workers.")
@click.option("--register", is_flag=True, help="Register best.pt as a new version of facemask-detector.")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
def train_command(data, model, epochs, imgsz, batch, device, experiment, run_name, project, seed, workers, register, overrides):
    """Train one YOLO26 model, tracked in MLflow. Extra Ultralytics args as key=value."""
    configure_runtime()
    from facemask.train import PretrainedUnavailableError, TrainConfig, train

    try:
        cfg = TrainConfig(data=data, model=model, epochs=epochs, imgsz=imgsz, batch=batch, device=device,
                          experiment=experiment, run_name=run_name, register=register, project=project, seed=seed,
                          overrides=_parse_overrides(overrides), workers=workers)
        result = train(cfg)
    except (FileNotFoundError, PretrainedUnavailableError, ValueError, click.BadParameter) as exc:
        _fail(str(exc))
    click.echo(f"run {result.run_id}: {result.epochs_run} epochs in {result.seconds:.0f}s, weights {result.best}")
    click.echo("  " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if k.startswith("val/")))
    if result.version:
        click.echo(f"  registered models:/facemask-detector/{result.version}")
    if result.logging_failures:
        click.echo(f"  warning: {result.logging_failures} MLflow calls failed; see the log above", err=True)


@main.command("evaluate")
@click.option("--model-uri", required=True, help="models:/facemask-detector@champion, models:/NAME/N, runs:/ID/..., or a .pt")
@click.option("--data", type=click.Path(path_type=Path), required=True)
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val", "train"]))
@click.option("--imgsz", default=640, show_default=True)
@click.option("--batch", default=16, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def evaluate_command(model_uri, data, split, imgsz, batch, device, as_json):
    """Measure a model on the clean test split; log it to the model's run and version."""
    configure_runtime()
    from facemask.detector import ModelNotFoundError
    from facemask.evaluate import evaluate

    try:
        # Ultralytics' progress bars write to stdout too; stdout carries only the result.
        with contextlib.redirect_stdout(sys.stderr):
            result = evaluate(model_uri, data, split=split, imgsz=imgsz, batch=batch, device=device)
    except (FileNotFoundError, ModelNotFoundError) as exc:
        _fail(str(exc))
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.table())


@main.command("promote")
@click.option("--model-uri", required=True, help="models:/facemask-detector/N")
@click.option("--alias", default="champion", show_default=True)
@click.option("--force", is_flag=True, help="Move the alias without comparing scores.")
def promote_command(model_uri, alias, force):
    """Move an alias to a version only if its test mAP50-95 beats the current holder's."""
    configure_runtime()
    from facemask.detector import ModelNotFoundError
    from facemask.evaluate import promote

    try:
        decision = promote(model_uri, alias=alias, force=force)
    except (ValueError, ModelNotFoundError) as exc:
        _fail(str(exc))
    verb = "promoted" if decision.promoted else "kept"
    subject = decision.candidate if decision.promoted else (decision.champion or "none")
    click.echo(f"{verb} version {subject} @{alias}: {decision.reason}")


@main.command("tune")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="data.yaml from `facemask data prepare`.")
@click.option("--model", default="yolo26s.pt", show_default=True)
@click.option("--trials", default=20, show_default=True)
@click.option("--epochs", default=10, show_default=True, help="Epochs per trial (ASHA's max_t).")
@click.option("--imgsz", default=640, show_default=True)
@click.option("--batch", default=8, show_default=True)
@click.option("--search-space", type=click.Path(path_type=Path, exists=True), default=None,
              help="YAML search space; default: the packaged one.")
@click.option("--cpus-per-trial", default=2.0, show_default=True)
@click.option("--gpus-per-trial", type=float, default=None, help="1, 0.5 or 0; default: 1 if the cluster has GPUs, else 0.")
@click.option("--trial-resources", multiple=True, help="Custom Ray resource per trial as NAME=AMOUNT (pins trials to nodes).")
@click.option("--max-concurrent", type=int, default=None, help="Cap on trials at once (never more than fit).")
@click.option("--time-budget-s", type=float, default=None)
@click.option("--storage", default="runs/tune", show_default=True, help="Local path or s3://bucket/prefix.")
@click.option("--name", default="facemask-study", show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted study of this --storage/--name.")
@click.option("--final-epochs", default=0, show_default=True, help="Retrain the best config this long (0: keep the trial's weights).")
@click.option("--grace-period", default=1, show_default=True)
@click.option("--reduction-factor", default=2.0, show_default=True)
@click.option("--max-failures", default=2, show_default=True)
@click.option("--metric", default="mAP50-95", show_default=True, help="Reported metric to optimise (val).")
@click.option("--mode", type=click.Choice(["max", "min"]), default="max", show_default=True)
@click.option("--experiment", default="facemask-tune", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--no-promote", is_flag=True, help="Register but do not move @champion.")
def tune_command(**kw):
    """Search hyperparameters with Ray Tune (Optuna TPE + ASHA); register and gate the best."""
    configure_runtime()
    init_ray()
    import ray

    from facemask.tune import StudyConfig, StudyInterrupted, tune

    gpus = kw.pop("gpus_per_trial")
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    promote_flag = not kw.pop("no_promote")
    resources = {}
    for item in kw.pop("trial_resources"):
        name, _, amount = item.partition("=")
        try:
            resources[name] = float(amount)
        except ValueError:
            _fail(f"--trial-resources {item!r}: expected NAME=AMOUNT, e.g. trainer=1")
    try:
        result = tune(StudyConfig(gpus_per_trial=gpus, promote=promote_flag, trial_resources=resources, **kw))
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    except StudyInterrupted as exc:
        click.echo(f"interrupted: {exc}", err=True)
        sys.exit(130)
    click.echo(study_table(result))


def study_table(result) -> str:
    lines = [
        f"study {result.storage_path}  (MLflow parent run {result.parent_run_id})",
        f"  trials: {result.counts['finished']} finished, {result.counts['stopped_early']} stopped early by ASHA, "
        f"{result.counts['failed']} failed; {result.trial_epochs} trial-epochs in {result.seconds:.0f}s",
        f"  best trial {result.best_trial}: val " + ", ".join(f"{k}={v:.4f}" for k, v in result.best_val.items()),
        "  test (clean split): " + ", ".join(f"{k}={v:.4f}" for k, v in result.test.items()),
        f"  registered version {result.version}; "
        + (f"promoted to @champion ({result.promote_reason})" if result.promoted else f"not promoted ({result.promote_reason or 'skipped'})"),
        "  best params:",
    ]
    lines += [f"    {k:15s} {v:.5g}" if isinstance(v, float) else f"    {k:15s} {v}" for k, v in sorted(result.best_config.items())]
    return "\n".join(lines)


@main.command("serve")
@click.option("--model-uri", default="models:/facemask-detector@champion", show_default=True,
              help="models:/NAME@ALIAS, models:/NAME/N, runs:/..., or a local .pt/.onnx (air-gapped).")
@click.option("--backend", type=click.Choice(["pt", "onnx"]), default="pt", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or a GPU index.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Proxy address; 0.0.0.0 exposes it (set FACEMASK_API_KEY).")
@click.option("--port", default=8000, show_default=True)
@click.option("--replicas", default=1, show_default=True, help="Detector replicas.")
@click.option("--num-cpus", default=1.0, show_default=True, help="CPUs per detector replica.")
@click.option("--num-gpus", default=0.0, show_default=True, help="GPUs per detector replica (0.25: four share one).")
@click.option("--max-batch-size", default=8, show_default=True)
@click.option("--threads", type=int, default=None, help="CPU inference threads per replica (on CPU: replicas x threads = cores).")
def serve_command(model_uri, backend, device, host, port, replicas, num_cpus, num_gpus, max_batch_size, threads):
    """Serve the detector, its API and page on this machine's Ray (Ctrl-C stops it)."""
    configure_runtime()
    from facemask.detector import ModelNotFoundError, resolve_model
    from facemask.serving import AppArgs

    try:
        resolve_model(model_uri, backend=backend)  # fail here, in one line, rather than in a replica's retries
        args = AppArgs(model_uri=model_uri, backend=backend, device=device, max_batch_size=max_batch_size,
                       threads=threads,
                       detector_options={"num_replicas": replicas,
                                         "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus}})
    except (ModelNotFoundError, ValueError) as exc:
        _fail(str(exc))
    from ray import serve

    init_ray(serving=True)
    try:
        url = start_serving(args, host=host, port=port)
        click.echo(f"serving {model_uri} ({backend}) at {url}/  (API docs {url}/docs); Ctrl-C stops")
        wait_for_stop()
    except (KeyboardInterrupt, SystemExit):  # stopped while still starting
        pass
    finally:
        serve.shutdown()


def wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except (KeyboardInterrupt, SystemExit):  # SystemExit: ray.init's own SIGTERM handler calls sys.exit
        pass


def start_serving(args, host: str = "127.0.0.1", port: int = 8000, name: str = "facemask", log_level: str = "INFO") -> str:
    """Start Serve's proxy on host:port and deploy the app; returns its URL once it answers."""
    from ray import serve

    from facemask.serving import build_app

    logging_config = {"log_level": log_level}
    serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)
    serve.run(build_app(args), name=name, route_prefix="/", logging_config=logging_config)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


@main.command("query")
@click.argument("image", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--url", default=lambda: os.environ.get("FACEMASK_URL", "http://127.0.0.1:8000"), show_default="FACEMASK_URL or http://127.0.0.1:8000")
@click.option("--model", "model_id", default=None, help="A registered version or alias (default: the server's).")
@click.option("--conf", type=float, default=None)
@click.option("--iou", type=float, default=None)
@click.option("--imgsz", type=int, default=None)
@click.option("--max-det", type=int, default=None)
@click.option("--save", type=click.Path(path_type=Path), default=None, help="Also write the annotated image here.")
@click.option("--json", "as_json", is_flag=True, help="Print the full JSON answer.")
def query_command(image, url, model_id, conf, iou, imgsz, max_det, save, as_json):
    """Send IMAGE to a running endpoint and print its detections (API key from FACEMASK_API_KEY)."""
    from facemask.client import Client, EndpointError

    client = Client(url)
    params = {"conf": conf, "iou": iou, "imgsz": imgsz, "max_det": max_det}
    try:
        result = client.predict(image, model=model_id, **params)
        if save:
            save.write_bytes(client.predict_image(image, model=model_id, **params))
    except EndpointError as exc:
        _fail(f"{url}: {exc}")
    except OSError as exc:
        _fail(f"{url}: no endpoint answered ({getattr(exc, 'reason', exc)}); start one with `facemask serve`")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(detections_table(result))
    if save:
        click.echo(f"annotated image: {save}")


def detections_table(result: dict) -> str:
    m, t, size = result["model"], result["timings"], result["image"]
    lines = [f"{len(result['detections'])} detections in {size['width']}x{size['height']} by "
             f"{m['name'] or m['uri']} v{m['version'] or '-'} ({m['backend']}), "
             f"inference {t['inference_ms']:.0f} ms, total {t['total_ms']:.0f} ms",
             "  counts: " + ", ".join(f"{k}={v}" for k, v in result["counts"].items())]
    for d in result["detections"]:
        b = d["box"]
        lines.append(f"  {d['label']:22s} {d['confidence']:.3f}  ({b['x1']:.0f}, {b['y1']:.0f}, {b['x2']:.0f}, {b['y2']:.0f})")
    return "\n".join(lines)


@main.command("export")
@click.option("--model-uri", required=True, help="models:/facemask-detector/N, @alias, runs:/..., or a local .pt")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--imgsz", default=640, show_default=True, help="Trace size; the export takes any size and batch.")
@click.option("--opset", type=int, default=None)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also copy the file here.")
def export_command(model_uri, fmt, imgsz, opset, out):
    """Export to ONNX and log it beside the .pt (serve it with --backend onnx)."""
    configure_runtime()
    from facemask.detector import ModelNotFoundError
    from facemask.export import export_onnx

    try:
        result = export_onnx(model_uri, imgsz=imgsz, opset=opset, out=out)
    except ModelNotFoundError as exc:
        _fail(str(exc))
    click.echo(f"exported {result.path}")
    if result.artifact_uri:
        click.echo(f"  logged as {result.artifact_uri}" + (f"; version {result.version} tagged onnx_artifact" if result.version else ""))


@main.command("predict")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option("--model-uri", default="models:/facemask-detector@champion", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for annotated output and detections.jsonl.")
@click.option("--conf", default=0.25, show_default=True)
@click.option("--iou", default=0.7, show_default=True)
@click.option("--imgsz", default=640, show_default=True)
@click.option("--max-det", default=300, show_default=True)
@click.option("--backend", type=click.Choice(["pt", "onnx"]), default="pt", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--concurrency", type=int, default=None, help="Model actors (default: one per CPU).")
@click.option("--engine", type=click.Choice(["ray", "local"]), default="ray", show_default=True)
def predict_command(source, model_uri, out, conf, iou, imgsz, max_det, backend, device, batch_size, concurrency, engine):
    """Annotate a folder of images or a video with Ray Data; write annotated files and detections.jsonl."""
    configure_runtime()
    from facemask.batch_predict import PredictConfig, predict
    from facemask.detector import ModelNotFoundError

    try:
        cfg = PredictConfig(source=source, model_uri=model_uri, out=out, conf=conf, iou=iou, imgsz=imgsz, max_det=max_det,
                            backend=backend, device=device, batch_size=batch_size, concurrency=concurrency,
                            engine=engine).validate()
        if engine == "ray":
            init_ray()
        with contextlib.redirect_stdout(sys.stderr):
            result = predict(cfg)
    except (FileNotFoundError, ValueError, ModelNotFoundError) as exc:
        _fail(str(exc))
    noun = "frames" if result.kind == "video" else "images"
    click.echo(f"{result.items} {noun} in {result.seconds:.1f}s: " + ", ".join(f"{k}={v}" for k, v in result.detections.items()))
    click.echo(f"  annotated: {result.annotated}\n  detections: {result.jsonl}")
    if result.skipped:
        click.echo(f"  skipped {len(result.skipped)} unreadable files (listed in {out / 'summary.json'})", err=True)


if __name__ == "__main__":
    main()
