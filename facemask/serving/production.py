"""What the endpoint gives back to learning: the images its model was unsure about, kept for
labelling, and drift (facemask.learning, as `facemask watch` uses them).

**Sampling** is off unless the app's `sampling` argument holds a rule: the fields of a camera
list's `sampling:` section, `faces: keep|blur` said by the operator. Two sources, each a folder
of the pool and a rate limit of its own (`per_hour`, per replica):
- `predict`: `/predict` and `/predict/image`. A request has no identity across calls, so every
  face counts as new (no one-image-per-person); it is kept for `uncertain`, `rare` or `random`.
  It sees what the request asked for: faces under the request's threshold were never returned.
- `live`: every `/live` stream's tracked people, one image per person (`flip` too), and the
  weak faces the tracker keeps under the threshold count for the band around it.

The image kept is the one the model saw (decoded at its size, not the upload), with boxes in its
pixels. Nothing here runs on the answer's path but the decision: the pool writes on its own
thread, and a full queue drops the sample and counts it (`ray_facemask_samples_total`).

**Drift** is always on: per version and source, the answers of the last 30 minutes at the
version's thresholds against what it answered on val (the reference calibration stored with its
point; without one, the source's own first hour), as `ray_facemask_drift_psi` with `camera`
`endpoint/<source>/v<version>`, set at most every DRIFT_REFRESH_S while answers come.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facemask.core.runtime import results_base
from facemask.learning.drift import DriftMonitor
from facemask.learning.pool import SamplePool
from facemask.learning.sampler import Sampler, SamplingRule

# The pool's folder under the results base when the app is not told one.
DEFAULT_FOLDER = Path("samples") / "endpoint"
DRIFT_REFRESH_S = 5.0


def checked_sampling(sampling: dict | None, samples_dir: str | None) -> tuple[dict | None, str | None]:
    """The app's `sampling` and `samples_dir` checked where the app is built (a mistake stops it
    there, in one line), the folder made absolute: replicas run in other working directories."""
    if sampling is None:
        return None, samples_dir
    SamplingRule.parse(sampling, "the endpoint's sampling")
    folder = Path(samples_dir) if samples_dir else results_base() / DEFAULT_FOLDER
    return sampling, str(folder.expanduser().resolve())


def model_rgb(image: Any):
    """A decoded PIL image as the pool writes it (H x W x 3 RGB)."""
    import numpy as np

    return np.asarray(image.convert("RGB"))


def in_model_pixels(detection: dict, scale: float) -> dict:
    """A detection of the answer (the upload's pixels) in the decoded image's pixels."""
    box = {k: round(v / scale, 1) for k, v in detection["box"].items()}
    return {**detection, "box": box}


class EndpointSampling:
    """A replica's sampling: one sampler per model version (each answers at its own operating
    point), one pool for the replica."""

    def __init__(self, rule: dict, folder: str, default_conf: float) -> None:
        self.rule = SamplingRule.parse(rule, "the endpoint's sampling")
        self.pool = SamplePool(Path(folder), self.rule, model_rgb)
        self.default_conf = default_conf
        self.samplers: dict[str, Sampler] = {}
        self.reported: dict[str, int] = {}

    def sampler(self, detector) -> Sampler:
        version = str(detector.info.uri)
        if version not in self.samplers:
            point = detector.point
            self.samplers[version] = Sampler(self.rule, dict(point.conf) if point else {}, self.default_conf)
        return self.samplers[version]

    def offer(self, source: str, detector, image, scale: float, answer: dict, weak: list[dict] = ()) -> list[str]:
        """Decide on one answered image and queue it when kept: the reasons (empty: not kept).
        `answer` is the answer built for the caller; `weak`, faces under its threshold (live)."""
        import time

        at = time.time()
        shown = [in_model_pixels(d, scale) for d in answer["detections"]]
        considered = shown + [dict(in_model_pixels(d, scale), track_id=None) for d in weak]
        sampler = self.sampler(detector)
        reasons = sampler.decide(source, considered, at)
        if reasons:
            labels = [{k: d[k] for k in ("label", "confidence", "box")} for d in shown]
            meta = {"at": at, "model_version": answer["model"].get("version"), "model_uri": answer["model"].get("uri")}
            self.pool.offer(source, image, labels, reasons, meta)
        self.report()
        return reasons

    def counts(self) -> dict[str, int]:
        """Every decision and write so far, over the replica's samplers and its pool (whose
        writer thread adds to its counts: copied in one step)."""
        out: dict[str, int] = {}
        for counts in [sampler.counts.copy() for sampler in self.samplers.values()] + [self.pool.counts.copy()]:
            for key, value in counts.items():
                out[key] = out.get(key, 0) + value
        return out

    def report(self) -> None:
        """The counts' growth since the last report, to the replica's metrics."""
        from facemask.serving.metrics import replica_metrics

        totals = self.counts()
        for outcome, value in totals.items():
            if value > self.reported.get(outcome, 0):
                replica_metrics().sampled(outcome, value - self.reported.get(outcome, 0))
        self.reported = totals

    def close(self) -> None:
        self.pool.close()


class EndpointDrift:
    """A replica's drift: one monitor per model version (its own reference and thresholds)."""

    def __init__(self, default_conf: float) -> None:
        self.default_conf = default_conf
        self.monitors: dict[str, DriftMonitor] = {}
        self.set_at: dict[str, float] = {}

    def update(self, source: str, detector, version: str, detections: list[dict], at: float) -> None:
        """One answered image's faces (the monitor keeps those at the version's thresholds)."""
        uri = str(detector.info.uri)
        if uri not in self.monitors:
            point = detector.point
            reference = point.scores.get("reference") if point is not None else None
            thresholds = dict(point.conf) if point is not None else {}
            self.monitors[uri] = DriftMonitor(reference, thresholds, self.default_conf)
        self.monitors[uri].update(source, detections, at)
        series = f"endpoint/{source}/v{version}"
        if at - self.set_at.get(series, 0.0) >= DRIFT_REFRESH_S:
            from facemask.serving.metrics import replica_metrics

            self.set_at[series] = at
            replica_metrics().drift(series, self.monitors[uri].figures(source, at))
