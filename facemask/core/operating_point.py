"""The operating point a model answers at: its image size and one confidence threshold per class.

AP integrates over every threshold, but the endpoint, the page, `/live` and `predict` answer
at one. A model trained at 320 and asked at 640 with a threshold of 0.25 for every class finds
twice as many faces as there are in a crowd photo. So the point is chosen on the validation
split, the size first (the one of the candidates with the best mAP50), then per class the
threshold of best F1 (or the lowest that reaches a target precision), and stored with the
registered version (`facemask.quality.calibrate`), where serving and `predict` take it as their default.

A leaf: the detector applies it, the registry reads it, calibration chooses it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from facemask.core.classes import CLASS_NAMES


def shown_thresholds(conf: float | None, point: "OperatingPoint | None", default: float) -> float | list[float]:
    """What an answer keeps: a given `conf` for every class, else the point's threshold per class
    id, else `default` for every class."""
    if conf is not None:
        return conf
    return point.thresholds() if point is not None else default


def lowest(shown: float | list[float]) -> float:
    return shown if isinstance(shown, (int, float)) else min(shown)


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

    def keeps(self, class_id: int, confidence: float) -> bool:
        return confidence >= self.conf[CLASS_NAMES[class_id]]

    def describe(self) -> dict[str, Any]:
        """What an answer says of the point it was given at."""
        return {"imgsz": self.imgsz, "conf": dict(self.conf), "chosen_on": self.chosen_on, "rule": self.rule}
