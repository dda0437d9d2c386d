"""Choose a model's operating point on the validation split and store it with its registered version.

`facemask calibrate` does it for any version; `facemask train --register` and `facemask tune`
do it for each version they register. The point (`facemask.core.operating_point`) is the version's
tag `facemask.core.operating_point`, which `predict`, Serve, `/live` and the page read as their
default; a request's own `conf` or `imgsz` still wins.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facemask.core.classes import CLASS_NAMES
from facemask.core.modelref import OPERATING_POINT_TAG, parse_models_uri
from facemask.core.operating_point import OperatingPoint
from facemask.core.runtime import resolve_device
from facemask.core.settings import INFERENCE
from facemask.detection.detector import load_detector
from facemask.detection.fusion import Boxes
from facemask.quality.bootstrap import bootstrap
from facemask.quality.scoring import LabelledImage, detect_split, detector_boxes, image_predictions, match, split_images
from facemask.tracking import model_version, set_version_tags

log = logging.getLogger("facemask.quality.calibrate")
FLOOR = 0.05  # no class answers below this, whatever val says: a threshold near 0 floods a crowd
LARGEST = 640  # the sizes tried: the training size, a third larger, and up to this
# A version registered with less val mAP50 than this finds too few faces for a threshold to mean
# anything: it keeps the defaults (`facemask calibrate` still stores a point when asked).
MIN_VAL_MAP50 = 0.05


def candidate_sizes(trained_at: int) -> list[int]:
    """The training size, about a third larger (small faces gain most), and 640, rounded to 32."""
    larger = int(round(trained_at * 4 / 3 / 32) * 32)
    return sorted({trained_at, min(larger, LARGEST), max(trained_at, LARGEST)})


def class_threshold(found: Sequence[Boxes], images: Sequence[LabelledImage], c: int, precision: float | None) -> float:
    """The threshold of best F1 for class `c` (or the lowest reaching `precision`), from raw detections.

    Exact: a threshold keeps every box at or above it, so only the last of a run of tied
    confidences is a candidate (one inside the run would be scored on boxes it does not keep
    apart), and the threshold is rounded down (rounding up once dropped the chosen box). A
    precision no threshold reaches is said in one line, and the best F1 is used instead."""
    conf = np.concatenate([f.conf[f.cls == c] for f in found]) if found else np.zeros(0)
    hits = np.concatenate([match(f, im.truth)[:, 0][f.cls == c] for f, im in zip(found, images)]) if found else conf
    faces = sum(int(np.sum(im.truth.cls == c)) for im in images)
    if not faces or not hits.any():  # nothing of this class found on val: nothing to choose from
        return INFERENCE.conf
    order = np.argsort(-conf, kind="stable")
    conf, tp = conf[order], np.cumsum(hits[order])
    prec, rec = tp / np.arange(1, len(tp) + 1), tp / faces
    ends = np.flatnonzero(np.append(conf[1:] < conf[:-1], True))  # the last box of each confidence
    f1 = 2 * prec[ends] * rec[ends] / np.maximum(prec[ends] + rec[ends], 1e-12)
    best = int(ends[np.argmax(f1)])
    if precision is not None:
        reach = ends[prec[ends] >= precision]
        if len(reach):
            best = int(reach[-1])
        else:
            log.warning(
                "class %s never reaches precision %g on val (at most %.3f): its threshold is the best F1's",
                CLASS_NAMES[c], precision, float(prec[ends].max()),
            )  # fmt: skip
    return max(FLOOR, math.floor(float(conf[best]) * 10_000) / 10_000)


def choose_operating_point(
    detect_at: Callable[[int], Callable],
    images: Sequence[LabelledImage],
    sizes: Sequence[int],
    precision: float | None = None,
) -> tuple[OperatingPoint, dict[int, float]]:
    """The size of best val mAP50 among `sizes`, then each class's threshold there.

    `detect_at(size)` is a `facemask.quality.scoring.Detect` of the model at that size. Returns the
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
    scores = {"val_mAP50": read[size], "reference": answers_reference(found_at[size], conf)}
    return OperatingPoint(size, conf, rule=rule, scores=scores), read


def answers_reference(found: Sequence[Boxes], conf: dict[str, float]) -> dict:
    """What the model answers on val at the point (class mix, scores): the drift monitor's
    reference (facemask.learning.drift)."""
    from facemask.learning.drift import reference_of

    thresholds = np.array([conf[name] for name in CLASS_NAMES])
    kept = [(f.cls[f.conf >= thresholds[f.cls]], f.conf[f.conf >= thresholds[f.cls]]) for f in found if len(f.cls)]
    classes = np.concatenate([k[0] for k in kept]) if kept else np.zeros(0, int)
    scores = np.concatenate([k[1] for k in kept]) if kept else np.zeros(0)
    return reference_of(classes.astype(int), scores)


def calibrate(
    model_uri: str,
    data: Path,
    sizes: Sequence[int],
    precision: float | None = None,
    tracking_uri: str | None = None,
    device: str = "auto",
) -> tuple[OperatingPoint, dict[int, float]]:
    """The operating point of a model (URI or weights) on the val split of a prepared dataset."""
    images = split_images(data, "val")
    if not images:
        raise ValueError(f"{data}: its val split has no images to choose an operating point on")
    detector = load_detector(model_uri, device=resolve_device(device), tracking_uri=tracking_uri)
    return choose_operating_point(lambda size: detector_boxes(detector, size), images, sizes, precision)


def store(model_uri: str, point: OperatingPoint, tracking_uri: str) -> str:
    """Tag a registered version (models:/NAME/VERSION or @ALIAS) with its operating point; its version."""
    name, version, alias = parse_models_uri(model_uri)
    if alias:
        version = model_version(model_uri, tracking_uri).version
    set_version_tags(name, str(version), {OPERATING_POINT_TAG: point.to_tag()}, tracking_uri)
    return str(version)


def calibrate_version(model_uri: str, data: Path, imgsz: int, tracking_uri: str) -> OperatingPoint | None:
    """Choose and store the point of a version just registered (models:/NAME/VERSION). A failure
    is logged, never fatal: the version then answers at conf 0.25 and 640 until `facemask calibrate`."""
    try:
        # On the CPU, as since it was written: the process registering may hold no GPU of its own.
        point, read = calibrate(model_uri, data, candidate_sizes(imgsz), tracking_uri=tracking_uri, device="cpu")
        if point.scores["val_mAP50"] < MIN_VAL_MAP50:
            raise ValueError(f"val mAP50 {point.scores['val_mAP50']:.3f} is under {MIN_VAL_MAP50}: too few faces found")
        store(model_uri, point, tracking_uri)
    except Exception as exc:  # the registration stands; the version keeps the defaults
        log.warning(
            "%s: no operating point stored (%s); it answers at conf %s, imgsz %s until "
            "`facemask calibrate --model-uri %s --data %s`",
            model_uri,
            exc,
            INFERENCE.conf,
            INFERENCE.imgsz,
            model_uri,
            data,
        )
        return None
    log.info("%s answers at %s (val mAP50 by size: %s)", model_uri, point.describe(), read)
    return point
