"""`facemask export` and `facemask predict`."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path

import click

from facemask.cli.base import JSON_OPTION, config_options, emit, hidden_alias, main, results_footer
from facemask.core.runtime import configure_runtime, init_ray
from facemask.core.settings import (
    PredictConfig,
    TrainConfig,
    default,
    is_stream,
)


@main.command("export")
@click.option("--model-uri", required=True, help="models:/facemask-detector/N, @alias, runs:/..., or a local .pt")
@click.option(
    "--to", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True, help="The export's format."
)
@click.option(
    "--imgsz",
    default=default(TrainConfig, "imgsz"),
    show_default=True,
    help="Trace size; the export takes any size and batch.",
)
@click.option("--opset", type=int, default=None)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also copy the file here.")
@JSON_OPTION
@hidden_alias("--format", "fmt")
def export_command(model_uri, fmt, imgsz, opset, out, as_json):
    """Export to ONNX and log it beside the .pt (serve it with --backend onnx)."""
    configure_runtime()
    from facemask.detection.export import export_onnx
    from facemask.tracking import default_tracking_uri

    result = export_onnx(model_uri, imgsz=imgsz, opset=opset, out=out, tracking_uri=default_tracking_uri())
    if as_json:
        emit(True, {"path": str(result.path), "artifact_uri": result.artifact_uri, "version": result.version})
        return
    click.echo(f"exported {result.path}")
    if result.artifact_uri:
        click.echo(
            f"  logged as {result.artifact_uri}"
            + (f"; version {result.version} tagged onnx_artifact" if result.version else "")
        )


@main.command("predict")
@click.argument("source")
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Folder for annotated output and detections.jsonl."
)
@config_options(
    PredictConfig,
    ("--model-uri", "model_uri", {}),
    (
        "--conf",
        "conf",
        {"type": float, "help": "Threshold for every class [default: the version's per class, else 0.25]."},
    ),
    ("--iou", "iou", {}),
    ("--imgsz", "imgsz", {"type": int, "help": "Inference size [default: the version's, else 640]."}),
    ("--max-det", "max_det", {}),
    ("--backend", "backend", {"type": click.Choice(["pt", "onnx"])}),
    ("--device", "device", {}),
    ("--batch", "batch_size", {"help": "Images per model call."}),
    ("--concurrency", "concurrency", {"type": int, "help": "Model actors (default: one per CPU)."}),
    (
        "--engine",
        "engine",
        {
            "type": click.Choice(["auto", "ray", "local"]),
            "help": "auto: Ray Data on a connected cluster or a machine with more than one core, else one process.",
        },
    ),
    ("--max-frames", "max_frames", {"type": int, "help": "Camera/stream: stop after this many processed frames."}),
    ("--max-seconds", "max_seconds", {"type": float, "help": "Camera/stream: stop after this many seconds."}),
)
@click.option("--save", is_flag=True, help="Camera/stream: also write annotated.mp4.")
@JSON_OPTION
@hidden_alias("--batch-size", "batch_size")
def predict_command(source, out, as_json, **kw):
    """Annotate a folder of images or a video with Ray Data, or track faces live on a camera index (0)
    or stream URL (rtsp://, http://); write annotated files, detections.jsonl and summary.json."""
    configure_runtime()
    from facemask.tracking import default_tracking_uri

    source = source if is_stream(source) else Path(source)
    cfg = PredictConfig(source=source, out=out, tracking_uri=default_tracking_uri(), **kw).validate()
    if is_stream(source):
        from facemask.video.streams import predict_stream as predict
    else:
        from facemask.core.runtime import cluster_connected
        from facemask.video.batch import predict

        if cfg.engine == "auto":
            ray_pays = cluster_connected() or (os.cpu_count() or 1) > 1  # docs/performance.md, batch inference
            cfg = dataclasses.replace(cfg, engine="ray" if ray_pays else "local")
        if cfg.engine == "ray":
            init_ray()
    with contextlib.redirect_stdout(sys.stderr):
        result = predict(cfg)
    paths = {"annotated": result.annotated, "detections": result.jsonl, "summary": result.jsonl.parent / "summary.json"}
    if result.skipped:
        click.echo(
            f"  skipped {len(result.skipped)} unreadable files (listed in {result.jsonl.parent / 'summary.json'})",
            err=True,
        )
    if as_json:
        payload = {"kind": result.kind, "items": result.items, "seconds": round(result.seconds, 2)}
        payload |= {"detections": result.detections, "people": result.people, "frames": result.frames}
        payload |= {"skipped": len(result.skipped), "files": {k: str(v) for k, v in paths.items() if v is not None}}
        emit(True, payload)
        return
    noun = "images" if result.kind == "images" else "frames"
    click.echo(
        f"{result.items} {noun} in {result.seconds:.1f}s: "
        + ", ".join(f"{k}={v}" for k, v in result.detections.items())
    )
    click.echo((f"  annotated: {result.annotated}\n" if result.annotated else "") + f"  detections: {result.jsonl}")
    if result.people is not None:
        click.echo(
            f"  people: {result.people['people']} ("
            + ", ".join(f"{k}={v}" for k, v in result.people["by_class"].items())
            + ")"
            + (f"; frames dropped while the model was busy: {result.frames['dropped']}" if result.frames else "")
        )
    click.echo(results_footer(paths={k: v for k, v in paths.items() if v is not None}))
