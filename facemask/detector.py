"""Load a detector from any model URI and run it, returning typed detections.

`load_detector` is the one loader: `models:/facemask-detector@champion`,
`models:/facemask-detector/3`, `runs:/<run_id>/...`, or a local `.pt` / `.onnx` file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facemask.classes import CLASS_NAMES


class ModelNotFoundError(LookupError):
    """A model URI that names nothing loadable; the message says what was missing."""


@dataclass(frozen=True)
class Detection:
    label: str
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in source pixels

    def to_dict(self) -> dict[str, Any]:
        x1, y1, x2, y2 = self.box
        return {"label": self.label, "class_id": self.class_id, "confidence": round(self.confidence, 4),
                "box": {"x1": round(x1, 1), "y1": round(y1, 1), "x2": round(x2, 1), "y2": round(y2, 1)}}


@dataclass(frozen=True)
class ModelInfo:
    """Where a loaded model came from: enough to trace any prediction back to its run."""

    uri: str
    weights: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Detector:
    """A YOLO model (PyTorch `.pt` or ONNX) behind one `predict` call."""

    def __init__(self, info: ModelInfo, device: str = "cpu") -> None:
        from facemask.train import ultralytics_env

        ultralytics_env()
        from ultralytics import YOLO

        self.info = info
        self.device = device
        self.model = YOLO(info.weights, task="detect")
        names = getattr(self.model, "names", None) or {}
        if names and list(names.values()) != list(CLASS_NAMES):
            raise ModelNotFoundError(
                f"{info.uri}: model classes {list(names.values())} are not facemask's {list(CLASS_NAMES)}"
            )

    def predict(
        self,
        images: Sequence[Any],
        conf: float = 0.25,
        iou: float = 0.7,
        imgsz: int = 640,
        max_det: int = 300,
    ) -> list[list[Detection]]:
        """Detect faces in each image (path, PIL image or HxWx3 RGB array); one list per image."""
        if not images:
            return []
        sources = [np.asarray(img.convert("RGB"))[:, :, ::-1] if hasattr(img, "convert") else img for img in images]
        results = self.model.predict(
            sources, conf=conf, iou=iou, imgsz=imgsz, max_det=max_det, device=self.device, verbose=False
        )
        out = []
        for result in results:
            boxes = result.boxes
            xyxy = boxes.xyxy.cpu().numpy() if len(boxes) else np.zeros((0, 4))
            cls = boxes.cls.cpu().numpy().astype(int) if len(boxes) else []
            scores = boxes.conf.cpu().numpy() if len(boxes) else []
            out.append(
                [
                    Detection(CLASS_NAMES[c], int(c), float(s), tuple(float(v) for v in b))
                    for b, c, s in zip(xyxy, cls, scores)
                ]
            )
        return out


def load_detector(model_uri: str, device: str = "cpu", backend: str = "pt") -> Detector:
    """Load a detector from a registry/run URI or a local weights file.

    backend "onnx" serves the ONNX export of that model (see `facemask export`) with onnxruntime.
    Raises ModelNotFoundError saying which model, version, alias, run or file is missing.
    """
    return Detector(resolve_model(model_uri, backend=backend), device=device if backend == "pt" else "cpu")


def resolve_model(model_uri: str, backend: str = "pt") -> ModelInfo:
    """Turn a model URI into local weights (PyTorch, or its ONNX export) plus its registry/run metadata."""
    if backend not in ("pt", "onnx"):
        raise ValueError(f"backend {backend!r}: expected pt or onnx")
    if model_uri.startswith(("models:/", "runs:/")):
        from facemask.tracking import fetch_model

        return fetch_model(model_uri, backend=backend)
    path = Path(model_uri).expanduser()
    if path.is_file() and path.suffix in (".pt", ".onnx"):
        if backend == "onnx" and path.suffix == ".pt":
            path = path.with_suffix(".onnx")
            if not path.is_file():
                raise ModelNotFoundError(f"{model_uri}: no ONNX export beside it; run `facemask export --model-uri {model_uri}`")
        return ModelInfo(uri=model_uri, weights=str(path.resolve()))
    if path.is_dir() and (path / "artifacts").is_dir():
        weights = find_weights(path)
        return ModelInfo(uri=model_uri, weights=str(weights))
    raise ModelNotFoundError(
        f"{model_uri}: no such weights file; pass a local .pt/.onnx, models:/facemask-detector@champion, "
        "models:/facemask-detector/<version> or runs:/<run_id>/<path>"
    )


def find_weights(folder: Path, prefer: str = ".pt") -> Path:
    """The weights file inside a downloaded MLflow model folder (or any folder)."""
    candidates = sorted(folder.rglob(f"*{prefer}")) or sorted(folder.rglob("*.pt")) or sorted(folder.rglob("*.onnx"))
    if not candidates:
        raise ModelNotFoundError(f"{folder}: no .pt or .onnx weights inside")
    best = [c for c in candidates if c.stem == "best"]
    return (best or candidates)[0]
