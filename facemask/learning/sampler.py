"""Which production frames are worth a label: those the model is unsure about.

A frame is kept for one or more reasons:
- `uncertain`: a face whose score is within `band` of its class's threshold (the version's
  operating point, or the watch's --conf): the decisions a label would change;
- `flip`: a tracked person whose class changed since their last frame;
- `rare`: a face of a rare class (by default `mask_weared_incorrect`, about 3% of the labels)
  scored at least its threshold less `band`;
- `random`: a share of all frames, kept whatever the model said, so that estimates made from
  the pool (its class mix, the model's error rate) stay unbiased.

Then limits: at most `per_hour` frames per camera in any hour (a sliding window), and a
person already kept is not kept again for `uncertain`, `flip` or `rare` (one image per track).
Every decision is counted by outcome and reason.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import ConfigError

REASONS = ("uncertain", "flip", "rare", "random")
FACES = ("keep", "blur")
MAX_TRACKS = 10_000  # remembered per camera (kept, last class): bounded however long it runs


@dataclass(frozen=True)
class SamplingRule:
    faces: str  # keep (the labeller must see faces) or blur: the operator's explicit choice, no default
    band: float = 0.1
    rare: tuple[str, ...] = ("mask_weared_incorrect",)
    flips: bool = True
    random_share: float = 0.002
    per_hour: int = 120
    max_mb: float = 2000.0
    max_age_days: float = 30.0

    @classmethod
    def parse(cls, value: Any, where: str) -> "SamplingRule":
        """The camera list's `sampling:` section; mistakes name the field and the fix."""
        fields = tuple(cls.__dataclass_fields__)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping with {', '.join(fields)}, got {value!r}")
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r}; the fields are {', '.join(fields)}")
        if value.get("faces") not in FACES:
            raise ConfigError(
                f"{where}.faces {value.get('faces')!r}: say what happens to faces in kept frames: `keep` (a "
                "labeller must see them to label masks; the pool then holds personal data) or `blur`"
            )
        rare = value.get("rare", list(cls.rare))
        if not isinstance(rare, list) or any(r not in CLASS_NAMES for r in rare):
            raise ConfigError(f"{where}.rare {rare!r}: a list of classes from {', '.join(CLASS_NAMES)}")
        numbers = {}
        for name, low, high in (("band", 0, 0.5), ("random_share", 0, 1), ("per_hour", 1, 100_000)):
            number = value.get(name, getattr(cls, name))
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not low <= number <= high:
                raise ConfigError(f"{where}.{name} {number!r}: must be a number in [{low}, {high}]")
            numbers[name] = number
        for name in ("max_mb", "max_age_days"):
            number = value.get(name, getattr(cls, name))
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number <= 0:
                raise ConfigError(f"{where}.{name} {number!r}: must be a positive number")
            numbers[name] = float(number)
        return cls(
            faces=value["faces"],
            rare=tuple(rare),
            flips=bool(value.get("flips", True)),
            band=float(numbers["band"]),
            random_share=float(numbers["random_share"]),
            per_hour=int(numbers["per_hour"]),
            max_mb=numbers["max_mb"],
            max_age_days=numbers["max_age_days"],
        )


class Sampler:
    """Decides, frame by frame, what to keep. `thresholds`: class name -> the threshold the
    model answers at (missing classes use `default`)."""

    def __init__(self, rule: SamplingRule, thresholds: dict[str, float], default: float, seed: int | None = None):
        self.rule, self.thresholds, self.default = rule, thresholds, default
        self.random = random.Random(seed)
        self.kept_at: dict[str, deque] = {}  # camera -> times of kept frames in the last hour
        self.tracks: dict[str, OrderedDict] = {}  # camera -> track -> (last class, kept already)
        self.counts: Counter = Counter()

    def reasons(self, detections: list[dict]) -> set[str]:
        """Why a frame's faces would be worth a label, before any limit and without the track-based `flip`."""
        found = set()
        for d in detections:
            threshold = self.thresholds.get(d["label"], self.default)
            if abs(d["confidence"] - threshold) <= self.rule.band:
                found.add("uncertain")
            if d["label"] in self.rule.rare and d["confidence"] >= threshold - self.rule.band:
                found.add("rare")
        return found

    def decide(self, camera: str, detections: list[dict], at: float) -> list[str]:
        """The reasons to keep this frame of `camera` (empty: not kept). `detections` are the
        frame's faces (`label`, `confidence`, `track_id` or None)."""
        self.counts["frames"] += 1
        tracks = self.tracks.setdefault(camera, OrderedDict())
        reasons = self.reasons(detections)
        new_people = False
        for d in detections:
            track = d.get("track_id")
            if track is None:
                new_people = True  # no identity to deduplicate on
                continue
            last, kept = tracks.pop(track, (None, False))
            if self.rule.flips and last is not None and last != d["label"]:
                reasons.add("flip")
            tracks[track] = (d["label"], kept)
            new_people = new_people or not kept
            while len(tracks) > MAX_TRACKS:
                tracks.popitem(last=False)
        if self.random.random() < self.rule.random_share:
            reasons.add("random")
        if not reasons:
            return []
        if reasons != {"random"} and not new_people:
            self.counts["duplicate"] += 1  # everyone in it was kept already
            return []
        recent = self.kept_at.setdefault(camera, deque())
        while recent and at - recent[0] >= 3600:
            recent.popleft()
        if len(recent) >= self.rule.per_hour:
            self.counts["rate_limited"] += 1
            return []
        recent.append(at)
        for d in detections:
            if d.get("track_id") is not None:
                tracks[d["track_id"]] = (d["label"], True)
        self.counts["kept"] += 1
        for reason in reasons:
            self.counts[f"reason_{reason}"] += 1
        return sorted(reasons)
