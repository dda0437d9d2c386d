"""Drift: whether what a camera's model answers still looks like what it answered on val.

For each camera, the answers of the last `window_s` (faces at or above their class's
threshold) give two distributions: the class mix, and the scores in ten bins over [0, 1].
Each is compared with the reference by the population stability index,

    PSI = sum over bins of (actual - expected) * ln(actual / expected),

which reads about 0 for the same distribution; under 0.1 is usually taken as stable, 0.1-0.25
as a moderate shift and over 0.25 as a large one (a new scene, night, a new kind of mask). The
reference is the val split's answers at the version's operating point, stored by calibration
with the point; a model without one (no calibration, the simulated GPU) is compared with the
camera's own first `baseline_s` of answers. No figure is given until the window holds
`min_answers` answers: a PSI over a handful is noise.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Sequence

import numpy as np

from facemask.core.classes import CLASS_NAMES

BINS = 10
EPS = 1e-4  # an empty bin's share: a PSI is finite even when a class never shows


def reference_of(classes: Sequence[int], scores: Sequence[float]) -> dict[str, Any]:
    """The reference distributions of answers (class ids, scores), as calibration stores them."""
    classes, scores = np.asarray(classes, int), np.asarray(scores, float)
    total = max(1, len(classes))
    mix = {name: round(float(np.sum(classes == c)) / total, 6) for c, name in enumerate(CLASS_NAMES)}
    hist = np.histogram(np.clip(scores, 0, 1), bins=BINS, range=(0, 1))[0] / total
    return {"class_mix": mix, "score_hist": [round(float(x), 6) for x in hist], "answers": int(len(classes))}


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    e = np.maximum(np.asarray(expected, float), EPS)
    a = np.maximum(np.asarray(actual, float), EPS)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


BUCKET_S = 10.0  # a window keeps its answers as counts per this much time


class _Window:
    """Answers of the last `window_s`, as class and score-bin counts per BUCKET_S of time: its
    memory follows the window's length, not the answer rate (an endpoint answering 400 faces a
    second would otherwise hold 720,000 answers for 30 minutes), and a figure needs no rescan."""

    def __init__(self) -> None:
        self.buckets: deque = deque()  # (start, classes, bins, answers), oldest first
        self.classes: Counter = Counter()
        self.bins: Counter = Counter()
        self.count = 0

    def add(self, at: float, label: str, score: float) -> None:
        b = min(BINS - 1, max(0, int(score * BINS)))
        start = at - at % BUCKET_S
        if not self.buckets or start > self.buckets[-1][0]:
            self.buckets.append((start, Counter(), Counter(), [0]))
        _, classes, bins, answers = self.buckets[-1]  # a late answer joins the newest bucket
        classes[label] += 1
        bins[b] += 1
        answers[0] += 1
        self.classes[label] += 1
        self.bins[b] += 1
        self.count += 1

    def expire(self, before: float) -> None:
        """Drop the buckets wholly older than `before`."""
        while self.buckets and self.buckets[0][0] + BUCKET_S <= before:
            _, classes, bins, answers = self.buckets.popleft()
            self.classes.subtract(classes)
            self.bins.subtract(bins)
            self.count -= answers[0]

    def distributions(self) -> tuple[list[float], list[float]]:
        n = max(1, self.count)
        return [self.classes[c] / n for c in CLASS_NAMES], [self.bins[b] / n for b in range(BINS)]


class DriftMonitor:
    def __init__(
        self,
        reference: dict | None,
        thresholds: dict[str, float],
        default: float,
        window_s: float = 1800.0,
        baseline_s: float = 3600.0,
        min_answers: int = 200,
    ) -> None:
        self.reference, self.thresholds, self.default = reference, thresholds, default
        self.window_s, self.baseline_s, self.min_answers = window_s, baseline_s, min_answers
        self.windows: dict[str, _Window] = {}
        self.baselines: dict[str, tuple[float, _Window]] = {}  # camera -> (its first answer, its answers)

    def update(self, camera: str, detections: list[dict], at: float) -> None:
        window = self.windows.setdefault(camera, _Window())
        answers = [d for d in detections if d["confidence"] >= self.thresholds.get(d["label"], self.default)]
        for d in answers:
            window.add(at, d["label"], d["confidence"])
        window.expire(at - self.window_s)
        if self.reference is None:
            started, baseline = self.baselines.setdefault(camera, (at, _Window()))
            if at - started < self.baseline_s:
                for d in answers:
                    baseline.add(at, d["label"], d["confidence"])

    def figures(self, camera: str, now: float) -> dict[str, Any] | None:
        """{"class_mix": PSI, "score": PSI, "answers": n, "against": "val" | "baseline"}, or None
        while the window (or the camera's baseline) holds too few answers."""
        window = self.windows.get(camera)
        if window is None:
            return None
        window.expire(now - self.window_s)
        if window.count < self.min_answers:
            return None
        if self.reference is not None:
            mix = [self.reference["class_mix"][c] for c in CLASS_NAMES]
            hist, against = self.reference["score_hist"], "val"
        else:
            started, baseline = self.baselines[camera]
            if now - started < self.baseline_s or baseline.count < self.min_answers:
                return None  # the baseline is still being gathered
            (mix, hist), against = baseline.distributions(), "baseline"
        actual_mix, actual_hist = window.distributions()
        return {
            "class_mix": round(psi(mix, actual_mix), 4),
            "score": round(psi(hist, actual_hist), 4),
            "answers": window.count,
            "against": against,
        }

    def forget(self, camera: str) -> None:
        self.windows.pop(camera, None)
        self.baselines.pop(camera, None)
