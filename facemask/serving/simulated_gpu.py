"""A stand-in accelerator for capacity tests: a GPU's batch latency, no model, no CPU.

`facemask serve --backend simulated-gpu` and `jobs/benchmarks/benchmark_serve.py --backends
simulated-gpu` put it where the detector goes, so the whole HTTP path (ingress, checks,
decoding, batching, the answer) can be load-tested on a machine without a GPU, and the CPU
that path costs per request can be measured apart from the model's. Never for real traffic:
its detections are a fixed pattern, not a model's.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import ConfigError
from facemask.core.modelref import ModelInfo
from facemask.core.settings import INFERENCE, ServeConfig
from facemask.detection.detector import Detection

NAME = "simulated-gpu"
# One face of each class, as fractions of the image (x1, y1, x2, y2), with a confidence each.
PATTERN = (
    (0, 0.10, 0.20, 0.30, 0.50, 0.91),
    (1, 0.40, 0.20, 0.60, 0.50, 0.84),
    (2, 0.70, 0.20, 0.90, 0.50, 0.62),
)


def parse_latency(text: str) -> tuple[tuple[int, float], ...]:
    """'8:5.2,32:10.4' -> ((8, 5.2), (32, 10.4)): batch sizes and their call times in ms, batches rising."""
    try:
        points = tuple(
            (int(batch), float(ms)) for batch, ms in (part.split(":") for part in text.split(",") if part.strip())
        )
    except ValueError:
        points = ()
    if (
        not points
        or any(batch < 1 or ms < 0 for batch, ms in points)
        or any(a[0] >= b[0] for a, b in zip(points, points[1:]))
    ):
        raise ConfigError(
            f"--simulated-latency {text!r}: expected BATCH:MS pairs with rising batch sizes, e.g. 8:5.2,32:10.4"
        )
    return points


def format_latency(points: Sequence[tuple[int, float]]) -> str:
    return ",".join(f"{batch}:{ms:g}" for batch, ms in points)


def call_ms(points: Sequence[tuple[int, float]], batch: int) -> float:
    """A call's time for `batch` images: flat up to the first point, linear between points, and past the last."""
    if batch <= points[0][0] or len(points) == 1:
        return points[0][1] if batch <= points[0][0] else points[0][1] * batch / points[0][0]
    for (b0, ms0), (b1, ms1) in zip(points, points[1:]):
        if batch <= b1:
            return ms0 + (ms1 - ms0) * (batch - b0) / (b1 - b0)
    (b0, ms0), (b1, ms1) = points[-2], points[-1]
    return ms1 + (ms1 - ms0) * (batch - b1) / (b1 - b0)


class SimulatedGPU:
    """`Detector`'s interface over a wait: each call sleeps its batch's time and returns PATTERN scaled to each image.

    The wait is `time.sleep`, which releases the GIL and uses no CPU, as a process waiting
    on a GPU does. Calls from one process run one after another, as on one device; the
    counters say how many calls and images it saw.
    """

    def __init__(self, latency: Sequence[tuple[int, float]] | None = None) -> None:
        self.latency = tuple(latency or parse_latency(ServeConfig.simulated_latency))
        self.info = ModelInfo(uri=NAME, weights=NAME, name=NAME, metrics={})
        self.device = NAME
        self._device = threading.Lock()
        self.calls = 0
        self.images = 0

    imgsz = INFERENCE.imgsz  # as `Detector.imgsz`: no operating point of its own
    point = None

    def predict(self, images, conf=None, iou=INFERENCE.iou, imgsz=None, max_det=INFERENCE.max_det):
        """As `Detector.predict` (a list of detections per image); iou and imgsz change nothing here."""
        if not images:
            return []
        conf = INFERENCE.conf if conf is None else conf
        with self._device:
            time.sleep(call_ms(self.latency, len(images)) / 1000)
            self.calls += 1
            self.images += len(images)
        return [self.detections(image_size(image), conf, max_det) for image in images]

    @staticmethod
    def detections(size: tuple[int, int], conf: float, max_det: int) -> list[Detection]:
        width, height = size
        found = [
            Detection(CLASS_NAMES[c], c, score, (x1 * width, y1 * height, x2 * width, y2 * height))
            for c, x1, y1, x2, y2, score in PATTERN
            if score >= conf
        ]
        return found[:max_det]


def image_size(image: Any) -> tuple[int, int]:
    """(width, height) of a PIL image or an HxWxC array."""
    if hasattr(image, "size") and isinstance(image.size, tuple):
        return image.size
    height, width = image.shape[:2]
    return width, height
