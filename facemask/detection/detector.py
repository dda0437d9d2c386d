"""Load a detector from any model URI and run it, returning typed detections.

`load_detector` is the one loader: `models:/facemask-detector@champion`,
`models:/facemask-detector/3`, `runs:/<run_id>/...`, or a local `.pt` / `.onnx` file.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import ConfigError, ModelNotFoundError
from facemask.core.modelref import ENSEMBLE_FILE, ModelInfo, check_backend, find_weights
from facemask.core.operating_point import OperatingPoint, lowest, shown_thresholds
from facemask.core.runtime import ultralytics_env
from facemask.core.settings import INFERENCE
from facemask.detection.fusion import DEFAULT_IOU, Boxes, weighted_boxes_fusion
from facemask.tracking.registry import check_model_reference, fetch_model

# Padding granularity: 64 px puts the Kaggle photos at 320 into 4 shapes instead of 12.
PAD_MULTIPLE = 64


@dataclass(frozen=True)
class Detection:
    label: str
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in source pixels

    def to_dict(self) -> dict[str, Any]:
        x1, y1, x2, y2 = self.box
        return {
            "label": self.label,
            "class_id": self.class_id,
            "confidence": round(self.confidence, 4),
            "box": {"x1": round(x1, 1), "y1": round(y1, 1), "x2": round(x2, 1), "y2": round(y2, 1)},
        }


class Detector:
    """A YOLO model (PyTorch `.pt` or ONNX) behind one `predict` call."""

    def __init__(self, info: ModelInfo, device: str = "cpu", threads: int | None = None, warm: bool = False) -> None:
        """threads: CPU threads for inference (torch's for the process, onnxruntime's for this model).

        warm: run one tiny prediction now, so the first real one does not pay Ultralytics' set-up.
        """
        ultralytics_env()
        from ultralytics import YOLO

        self.info = info
        self.device = device
        # The version's own operating point (chosen on val); None: the defaults, for every class.
        self.point = OperatingPoint.from_tag(info.point)
        if threads:
            import torch

            torch.set_num_threads(threads)
        onnx_threads = threads if info.weights.endswith(".onnx") else None
        with onnx_session_options(onnx_threads):
            self.model = YOLO(info.weights, task="detect")
            names = getattr(self.model, "names", None) or {}
            if names and list(names.values()) != list(CLASS_NAMES):
                raise ModelNotFoundError(
                    f"{info.uri}: model classes {list(names.values())} are not facemask's {list(CLASS_NAMES)}"
                )
            # Ultralytics builds its predictor, and the ONNX session, on the first call: the session
            # must be made inside this block to get the thread options.
            if warm or onnx_threads is not None:
                self.predict([np.zeros((64, 64, 3), dtype=np.uint8)], imgsz=64)

    def predict(
        self,
        images: Sequence[Any],
        conf: float | None = None,
        iou: float = INFERENCE.iou,
        imgsz: int | None = None,
        max_det: int = INFERENCE.max_det,
        augment: bool = False,
    ) -> list[list[Detection]]:
        """Detect faces in each image (path, PIL image or HxWx3 RGB array); one list per image.

        Each image is resized so its long side is `imgsz` (as Ultralytics does) and padded at
        the bottom and right up to a multiple of PAD_MULTIPLE; images that land on the same
        padded shape go through the model as one batch. A result never depends on which other
        images shared its call, and a batch of mixed photo sizes runs as a few same-shape
        batches instead of one padded to squares (on CPU, same-shape batches of 8 cost a third
        of the time per image of single calls; mixed ones cost more than single calls).
        augment: Ultralytics' test-time augmentation (flipped and rescaled copies, merged).
        conf and imgsz left None: the model's operating point (its size and one threshold per
        class), else conf 0.25 for every class at 640; a number given applies to every class.
        """
        if not images:
            return []
        per_class = self.point if conf is None else None
        conf = per_class.lowest if per_class else INFERENCE.conf if conf is None else conf
        imgsz = self.imgsz if imgsz is None else imgsz
        import cv2

        stride = int(max(getattr(self.model.model, "stride", [32]))) if hasattr(self.model, "model") else 32
        size = max(stride, int(np.ceil(imgsz / stride) * stride))
        prepared, groups = [], {}
        for i, image in enumerate(images):
            bgr = to_bgr(image)
            h, w = bgr.shape[:2]
            ratio = size / max(h, w)
            nh, nw = max(1, round(h * ratio)), max(1, round(w * ratio))
            resized = bgr if (nh, nw) == (h, w) else cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
            step = max(stride, PAD_MULTIPLE)
            ph, pw = min(size, int(np.ceil(nh / step) * step)), min(size, int(np.ceil(nw / step) * step))
            canvas = np.full((ph, pw, 3), 114, dtype=np.uint8)
            canvas[:nh, :nw] = resized
            prepared.append((canvas, w / nw, h / nh, w, h))
            groups.setdefault((ph, pw), []).append(i)
        out: list[list[Detection]] = [[] for _ in images]
        for shape, indexes in groups.items():
            results = self.model.predict(
                [prepared[i][0] for i in indexes],
                conf=conf,
                iou=iou,
                imgsz=list(shape),
                max_det=max_det,
                device=self.device,
                augment=augment,
                verbose=False,
            )
            for i, result in zip(indexes, results):
                out[i] = source_detections(result.boxes, *prepared[i][1:], per_class)
        return out

    @property
    def imgsz(self) -> int:
        """The size this model answers at unless asked otherwise."""
        return self.point.imgsz if self.point else INFERENCE.imgsz


@contextlib.contextmanager
def onnx_session_options(threads: int | None) -> Iterator[None]:
    """While Ultralytics creates ONNX Runtime sessions: `threads` intra-op threads, and no spinning.

    ONNX Runtime's threads busy-wait between runs by default, which takes the CPU from the
    HTTP proxy and from other replicas on the same node; Ultralytics exposes neither setting.
    """
    if threads is None:
        yield
        return
    from facemask.compat.onnxruntime import session_options

    with session_options(threads):
        yield


def upright_rgb(image):
    """A PIL image turned by its EXIF orientation, in RGB: what browsers and viewers show, so boxes match it.

    16- and 32-bit grey images (PNG mode I;16, I) are scaled to 8 bits first: Pillow's own
    conversion clips them, and a 16-bit photo would come out all white.
    """
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        wide = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" and wide.max(initial=0) > 255 else max(255.0, float(wide.max(initial=0)))
        image = Image.fromarray(np.clip(wide * (255.0 / top), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def to_bgr(image: Any) -> np.ndarray:
    """A path, PIL image or RGB array as the BGR uint8 array Ultralytics models take."""
    if isinstance(image, (str, Path)):
        from PIL import Image

        with Image.open(image) as opened:
            image = upright_rgb(opened)
    if hasattr(image, "convert"):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array[:, :, 2::-1], dtype=np.uint8)


class EnsembleDetector:
    """Several YOLO models behind one `predict`: each member's boxes of an image merged by
    weighted-box fusion (`facemask.detection.fusion`), then kept at the ensemble's own operating point.

    `info.weights` is the ensemble's ENSEMBLE_FILE: its members' weights files (beside it),
    their fusion weights and the IoU that joins two boxes.
    """

    def __init__(self, info: ModelInfo, device: str = "cpu", threads: int | None = None, warm: bool = False) -> None:
        spec = json.loads(Path(info.weights).read_text())
        folder = Path(info.weights).parent
        self.info, self.device = info, device
        self.point = OperatingPoint.from_tag(info.point)
        self.members = [
            Detector(
                ModelInfo(uri=m.get("uri", m["weights"]), weights=str(folder / m["weights"])), device, threads, warm
            )
            for m in spec["members"]
        ]
        self.weights = spec.get("weights") or [1.0] * len(self.members)
        self.fusion_iou = float(spec.get("fusion_iou", DEFAULT_IOU))

    @property
    def imgsz(self) -> int:
        return self.point.imgsz if self.point else INFERENCE.imgsz

    def predict(
        self,
        images: Sequence[Any],
        conf: float | None = None,
        iou: float = INFERENCE.iou,
        imgsz: int | None = None,
        max_det: int = INFERENCE.max_det,
        augment: bool = False,
    ) -> list[list[Detection]]:
        """As `Detector.predict`. Members answer at half the lowest threshold asked for: a fused box's
        confidence is its members' mean, so boxes under the threshold still add to a face's vote."""
        if not images:
            return []
        shown = shown_thresholds(conf, self.point, INFERENCE.conf)
        limits = [shown] * len(CLASS_NAMES) if isinstance(shown, (int, float)) else shown
        imgsz = self.imgsz if imgsz is None else imgsz
        settings = {"conf": lowest(shown) / 2, "iou": iou, "imgsz": imgsz, "max_det": max_det, "augment": augment}
        answers = [member.predict(images, **settings) for member in self.members]
        out = []
        for i in range(len(images)):
            per_model = [as_boxes(answer[i]) for answer in answers]
            fused = weighted_boxes_fusion(per_model, self.weights, self.fusion_iou)
            out.append(
                [
                    Detection(CLASS_NAMES[c], int(c), float(score), tuple(float(v) for v in box))
                    for box, score, c in zip(fused.xyxy, fused.conf, fused.cls)
                    if score >= limits[c]
                ][:max_det]
            )
        return out


def source_detections(boxes, sx: float, sy: float, w: int, h: int, point: OperatingPoint | None) -> list[Detection]:
    """An Ultralytics result's boxes in the source image's pixels; only those its class's threshold keeps."""
    if not len(boxes):
        return []
    xyxy = np.clip(boxes.xyxy.cpu().numpy() * np.array([sx, sy, sx, sy]), 0, [w, h, w, h])
    return [
        Detection(CLASS_NAMES[c], int(c), float(score), tuple(float(v) for v in box))
        for box, c, score in zip(xyxy, boxes.cls.cpu().numpy().astype(int), boxes.conf.cpu().numpy())
        if point is None or point.keeps(int(c), float(score))
    ]


def as_boxes(detections: Sequence[Detection]) -> Boxes:
    """One image's detections as the arrays fusion reads."""
    if not detections:
        return Boxes.empty()
    return Boxes(
        np.asarray([d.box for d in detections], float),
        np.asarray([d.confidence for d in detections], float),
        np.asarray([d.class_id for d in detections], int),
    )


def make_detector(info: ModelInfo, device: str = "cpu", threads: int | None = None, warm: bool = False):
    """A `Detector`, or an `EnsembleDetector` where the weights are an ensemble's file."""
    kind = EnsembleDetector if Path(info.weights).name == ENSEMBLE_FILE else Detector
    return kind(info, device=device, threads=threads, warm=warm)


def load_detector(
    model_uri: str,
    device: str = "cpu",
    backend: str = "pt",
    threads: int | None = None,
    warm: bool = False,
    tracking_uri: str | None = None,
) -> Detector:
    """Load a detector from a registry/run URI (in the MLflow store `uri`) or a local weights file.

    backend "onnx" serves the ONNX export of that model (see `facemask export`) with onnxruntime.
    Raises ModelNotFoundError saying which model, version, alias, run or file is missing.
    """
    return make_detector(
        resolve_model(model_uri, backend=backend, tracking_uri=tracking_uri),
        device=device if backend == "pt" else "cpu",
        threads=threads,
        warm=warm,
    )


def resolve_model(
    model_uri: str, backend: str = "pt", tracking_uri: str | None = None, download: bool = True
) -> ModelInfo:
    """Turn a model URI into local weights (PyTorch, or its ONNX export) plus its registry/run metadata.

    A `models:/` or `runs:/` URI is looked up in the MLflow store `uri`; a local file needs none.
    With `download=False` a registry or run URI is only checked, from metadata (`facemask serve`
    checks before its replicas each download), and the ModelInfo holds no weights.
    """
    check_backend(backend)
    if model_uri.startswith(("models:/", "runs:/")):
        if not tracking_uri:
            raise ConfigError(
                f"{model_uri}: a registry or run URI is looked up in an MLflow store; pass its tracking URI "
                "(the command line uses MLFLOW_TRACKING_URI, else mlflow.db here)"
            )
        if not download:
            check_model_reference(model_uri, tracking_uri, backend=backend)
            return ModelInfo(uri=model_uri, weights="")
        return fetch_model(model_uri, tracking_uri, backend=backend)
    path = Path(model_uri).expanduser()
    if path.is_file() and path.name == ENSEMBLE_FILE and backend == "pt":
        return ModelInfo(uri=model_uri, weights=str(path.resolve()))
    if path.is_file() and path.suffix in (".pt", ".onnx"):
        if backend == "onnx" and path.suffix == ".pt":
            path = path.with_suffix(".onnx")
            if not path.is_file():
                raise ModelNotFoundError(
                    f"{model_uri}: no ONNX export beside it; run `facemask export --model-uri {model_uri}`"
                )
        return ModelInfo(uri=model_uri, weights=str(path.resolve()))
    if path.is_dir() and (path / "artifacts").is_dir():
        weights = find_weights(path)
        return ModelInfo(uri=model_uri, weights=str(weights))
    raise ModelNotFoundError(
        f"{model_uri}: no such weights file; pass a local .pt/.onnx, models:/facemask-detector@champion, "
        "models:/facemask-detector/<version> or runs:/<run_id>/<path>"
    )
