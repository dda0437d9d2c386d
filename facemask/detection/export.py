"""Export a trained detector to ONNX, beside its PyTorch weights in MLflow.

The export has dynamic batch and image axes, so one file serves any `imgsz` and the
batches that Serve forms. For a registered version it is logged to the version's run under
`onnx/` and the version is tagged `onnx_artifact=runs:/<run>/onnx/<file>`, which is where
`load_detector(uri, backend="onnx")` and `facemask serve --backend onnx` look for it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from facemask.core.errors import TrackingUnavailableError
from facemask.core.modelref import ONNX_TAG, parse_models_uri
from facemask.core.runtime import resolve_path, ultralytics_env
from facemask.core.settings import INFERENCE
from facemask.detection.detector import resolve_model
from facemask.tracking import log_to_run, set_version_tags

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    artifact_uri: str | None  # runs:/... where it was logged, when the model came from MLflow
    version: str | None


def export_onnx(
    model_uri: str,
    imgsz: int = INFERENCE.imgsz,
    opset: int | None = None,
    out: Path | None = None,
    tracking_uri: str | None = None,
) -> ExportResult:
    """Write `<weights>.onnx` (or `out`) for `model_uri`; log and tag it in the MLflow store `uri`
    when the model is registered there."""
    ultralytics_env()
    from ultralytics import YOLO

    info = resolve_model(model_uri, tracking_uri=tracking_uri)
    options = {"format": "onnx", "imgsz": imgsz, "dynamic": True, "simplify": False, "device": "cpu"}
    if opset:
        options["opset"] = opset
    # Ultralytics prints its export report on stdout; stdout is for our result.
    with contextlib.redirect_stdout(sys.stderr):
        exported = Path(YOLO(info.weights, task="detect").export(**options))
    if out is not None:
        out = resolve_path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(exported, out)
        exported = out
    artifact_uri = None
    if info.run_id:
        if not log_to_run(info.run_id, {}, [(exported, "onnx")], tracking_uri):
            raise TrackingUnavailableError(
                f"{model_uri}: could not log {exported.name} to run {info.run_id}; "
                "is the tracking server up? The export is at " + str(exported)
            )
        artifact_uri = f"runs:/{info.run_id}/onnx/{exported.name}"
        if info.version:
            name = info.name or parse_models_uri(model_uri)[0]
            set_version_tags(name, info.version, {ONNX_TAG: artifact_uri, "onnx_imgsz": imgsz}, tracking_uri)
        log.info("logged %s to run %s", exported.name, info.run_id)
    return ExportResult(path=exported, artifact_uri=artifact_uri, version=info.version)
