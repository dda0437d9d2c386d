"""The operating point a model answers at: its image size and one confidence threshold per class.

AP integrates over every threshold, but the endpoint, the page, `/live` and `predict` answer
at one. A model trained at 320 and asked at 640 with a threshold of 0.25 for every class finds
twice as many faces as there are in a crowd photo. So the point is chosen on the validation
split, the size first (the one of the candidates with the best mAP50), then per class the
threshold of best F1 (or the lowest that reaches a target precision), and stored with the
registered version, where serving and `predict` take it as their default.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from facemask.bootstrap import bootstrap
from facemask.classes import CLASS_NAMES
from facemask.fusion import Boxes
from facemask.scoring import LabelledImage, detect_split, image_predictions, match

OPERATING_POINT_TAG = "facemask.operating_point"
FLOOR = 0.05  # no class answers below this, whatever val says: a threshold near 0 floods a crowd


@dataclass(frozen=True)
class OperatingPoint:
    imgsz: int
    conf: dict[str, float]  # class name -> threshold
    chosen_on: str = "val"
    rule: str = "f1"
    scores: dict[str, Any] = field(default_factory=dict)  # what val read at this point

    def thresholds(self) -> list[float]:
        """One threshold per class id."""
        return [self.conf[name] for name in CLASS_NAMES]

    @property
    def lowest(self) -> float:
        """The threshold to ask the model at before each class's own is applied."""
        return min(self.conf.values())

    def to_tag(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_tag(cls, text: str | None) -> "OperatingPoint | None":
        """The point a version's tag holds; None for a version without one (registered before)."""
        if not text:
            return None
        doc = json.loads(text)
        conf = {name: float(doc["conf"][name]) for name in CLASS_NAMES}
        return cls(int(doc["imgsz"]), conf, doc.get("chosen_on", "val"), doc.get("rule", "f1"), doc.get("scores", {}))


def class_threshold(found: Sequence[Boxes], images: Sequence[LabelledImage], c: int, precision: float | None) -> float:
    """The threshold of best F1 for class `c` (or the lowest reaching `precision`), from raw detections."""
    conf = np.concatenate([f.conf[f.cls == c] for f in found]) if found else np.zeros(0)
    hits = np.concatenate([match(f, im.truth)[:, 0][f.cls == c] for f, im in zip(found, images)]) if found else conf
    faces = sum(int(np.sum(im.truth.cls == c)) for im in images)
    if not len(conf) or not faces:
        return 0.25
    order = np.argsort(-conf, kind="stable")
    conf, tp = conf[order], np.cumsum(hits[order])
    prec, rec = tp / np.arange(1, len(tp) + 1), tp / faces
    if precision is not None:
        reach = np.flatnonzero(prec >= precision)
        best = int(reach[-1]) if len(reach) else 0
    else:
        best = int(np.argmax(2 * prec * rec / np.maximum(prec + rec, 1e-12)))
    return round(max(FLOOR, float(conf[best])), 4)


def choose_operating_point(
    detect_at: Callable[[int], Callable],
    images: Sequence[LabelledImage],
    sizes: Sequence[int],
    precision: float | None = None,
) -> tuple[OperatingPoint, dict[int, float]]:
    """The size of best val mAP50 among `sizes`, then each class's threshold there.

    `detect_at(size)` is a `facemask.scoring.Detect` of the model at that size. Returns the
    point and the val mAP50 of every size tried.
    """
    read: dict[int, float] = {}
    found_at: dict[int, list[Boxes]] = {}
    for size in sizes:
        found_at[size] = detect_split(detect_at(size), images)
        scored = bootstrap(image_predictions(images, found_at[size]), CLASS_NAMES, resamples=1)
        read[size] = scored.overall["mAP50"].value
    size = max(sizes, key=lambda s: (read[s], -s))
    conf = {name: class_threshold(found_at[size], images, c, precision) for c, name in enumerate(CLASS_NAMES)}
    rule = "f1" if precision is None else f"precision>={precision}"
    return OperatingPoint(size, conf, rule=rule, scores={"val_mAP50": read[size]}), read
