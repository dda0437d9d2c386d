"""Scores any way of detecting on a prepared split, from its raw detections.

`facemask evaluate` scores one model through Ultralytics' validator. What the validator
cannot run (several models fused into one answer, a model at another size or with
test-time augmentation, an answer at one confidence threshold per class) is scored here:
detect every image of the split once at a low threshold, keep the raw boxes, and derive
from them both AP (each box matched to the ground truth at the ten IoU thresholds, as the
validator matches, into `ImagePredictions`, so every interval and paired difference comes
from `facemask.quality.bootstrap`) and what a user sees at an operating point: precision, recall
and the error of the per-image count of people in each mask state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from facemask.core.classes import CLASS_NAMES
from facemask.data.yolo_folder import label_path
from facemask.detection.detector import as_boxes
from facemask.detection.fusion import DEFAULT_IOU, Boxes, box_iou, weighted_boxes_fusion
from facemask.quality.bootstrap import DEFAULT_RESAMPLES, IOU_THRESHOLDS, ImagePredictions, Interval, ratio_interval

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# What the validator detects at (Ultralytics' val defaults): every box that could add to AP.
ALL_BOXES = {"conf": 0.001, "iou": 0.7, "max_det": 300}

Detect = Callable[[Sequence[Path]], list[Boxes]]


@dataclass
class LabelledImage:
    name: str
    path: Path
    truth: Boxes  # pixels; conf is 1


def split_images(data_yaml: Path, split: str) -> list[LabelledImage]:
    """The images of one split of a prepared dataset with their YOLO labels, in name order."""
    from PIL import Image

    doc = yaml.safe_load(Path(data_yaml).read_text())
    entry = Path(doc["path"]) / doc[split]
    paths = (
        [Path(line) for line in entry.read_text().split()]
        if entry.is_file()
        else [p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    )
    out = []
    for path in sorted(set(paths), key=lambda p: p.name):
        with Image.open(path) as im:
            w, h = im.size
        rows = np.loadtxt(label_path(path), ndmin=2) if label_path(path).is_file() else np.zeros((0, 5))
        rows = rows.reshape(-1, 5)
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        out.append(LabelledImage(path.name, path, Boxes(xyxy, np.ones(len(rows)), rows[:, 0].astype(int))))
    return out


def split_fingerprint(data_yaml: Path, split: str) -> str | None:
    """A hash of one split's photos and labels (names and contents): two dataset versions that
    kept their test split (`data prepare --keep-splits`) give the same one, so their models'
    scores compare. None when the split cannot be read."""
    import hashlib

    try:
        images = split_images(data_yaml, split)
    except (OSError, KeyError, ValueError):
        return None
    digest = hashlib.sha256()
    for image in images:
        label = label_path(image.path)
        digest.update(image.name.encode() + b"\0" + hashlib.sha256(image.path.read_bytes()).digest())
        digest.update(hashlib.sha256(label.read_bytes()).digest() if label.is_file() else b"-")
    return digest.hexdigest()


def detector_boxes(detector, imgsz: int, augment: bool = False, **settings: Any) -> Detect:
    """A `Detect` of one loaded `facemask.detection.detector.Detector` at `imgsz` (every box, unless `settings` say)."""
    settings = {**ALL_BOXES, **settings}

    def detect(paths: Sequence[Path]) -> list[Boxes]:
        found = detector.predict(list(paths), imgsz=imgsz, augment=augment, **settings)
        return [as_boxes(image) for image in found]

    return detect


def fused(members: Sequence[Detect], weights: Sequence[float] | None = None, iou_thr: float = DEFAULT_IOU) -> Detect:
    """One `Detect` whose answer is the weighted-box fusion of each member's."""

    def detect(paths: Sequence[Path]) -> list[Boxes]:
        answers = [member(paths) for member in members]
        return [weighted_boxes_fusion([a[i] for a in answers], weights, iou_thr) for i in range(len(paths))]

    return detect


def detect_split(detect: Detect, images: Sequence[LabelledImage], batch: int = 8) -> list[Boxes]:
    """Raw detections of every image, in the images' order."""
    out: list[Boxes] = []
    for start in range(0, len(images), batch):
        out.extend(detect([image.path for image in images[start : start + batch]]))
    return out


def match(pred: Boxes, truth: Boxes) -> np.ndarray:
    """Which predictions are true positives at each IoU threshold (n_pred x 10), as Ultralytics
    8.4's validator decides (`BaseValidator.match_predictions`) and COCO does: in descending
    confidence, each box takes the face of highest IoU not yet claimed at that threshold, of
    its class and with IoU at least the threshold. (Pairing the highest IoUs first instead
    made a confident box a false positive where a less confident one overlapped its face more.)"""
    tp = np.zeros((len(pred), len(IOU_THRESHOLDS)), bool)
    if not len(pred) or not len(truth):
        return tp
    iou = np.stack([box_iou(t, pred.xyxy) for t in truth.xyxy])  # faces x predictions
    iou *= truth.cls[:, None] == pred.cls[None, :]
    claimed = np.zeros((len(truth), len(IOU_THRESHOLDS)), bool)  # faces taken at each threshold
    columns = np.arange(len(IOU_THRESHOLDS))
    for j in np.argsort(-pred.conf, kind="stable"):
        if not (iou[:, j] >= IOU_THRESHOLDS[0]).any():
            continue
        available = np.where(claimed, 0.0, iou[:, j, None])  # faces x thresholds
        best = available.argmax(0)
        tp[j] = available[best, columns] >= IOU_THRESHOLDS
        claimed[best, columns] |= tp[j]
    return tp


def image_predictions(images: Sequence[LabelledImage], found: Sequence[Boxes]) -> ImagePredictions:
    """The matched predictions `facemask.quality.bootstrap` scores (AP with intervals, paired differences)."""
    return ImagePredictions.from_images(
        [
            {"name": im.name, "tp": match(f, im.truth), "conf": f.conf, "pred_cls": f.cls, "target_cls": im.truth.cls}
            for im, f in zip(images, found)
        ]
    )


def at_thresholds(found: Sequence[Boxes], thresholds: Sequence[float]) -> list[Boxes]:
    """What an answer at one confidence threshold per class (indexed by class id) keeps."""
    limits = np.asarray(thresholds, float)
    return [f.keep(f.conf >= limits[f.cls]) if len(f) else f for f in found]


def point_tallies(images: Sequence[LabelledImage], kept: Sequence[Boxes]) -> dict[str, np.ndarray]:
    """Per image and class (images x classes): true positives at IoU 0.5, detections, faces."""
    shape = (len(images), len(CLASS_NAMES))
    tallies = {"tp": np.zeros(shape), "detections": np.zeros(shape), "faces": np.zeros(shape)}
    for i, (im, f) in enumerate(zip(images, kept)):
        hit = match(f, im.truth)[:, 0]
        for c in range(len(CLASS_NAMES)):
            tallies["tp"][i, c] = hit[f.cls == c].sum()
            tallies["detections"][i, c] = np.sum(f.cls == c)
            tallies["faces"][i, c] = np.sum(im.truth.cls == c)
    return tallies


def point_scores(
    images: Sequence[LabelledImage],
    kept: Sequence[Boxes],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, dict[str, Interval]]:
    """Precision and recall at IoU 0.5 and the mean absolute error of each image's count of people,
    per class and over all (people whatever their state), each with its interval over resamples
    of the images (the same `seed`, the same resamples: two answers' intervals are paired)."""
    t = point_tallies(images, kept)
    errors = count_errors(images, kept)
    ones = np.ones(len(images))
    out = {}
    for name, cs in [(name, [c]) for c, name in enumerate(CLASS_NAMES)] + [("all", list(range(len(CLASS_NAMES))))]:
        tp, det, faces = (t[k][:, cs].sum(1) for k in ("tp", "detections", "faces"))
        out[name] = {
            "precision": ratio_interval(tp, det, resamples, seed),
            "recall": ratio_interval(tp, faces, resamples, seed),
            "count_mae": ratio_interval(errors[name], ones, resamples, seed),
        }
    return out


def count_errors(images: Sequence[LabelledImage], kept: Sequence[Boxes]) -> dict[str, np.ndarray]:
    """Per image, the absolute error of its count of people in each state, and of all people ("all")."""
    t = point_tallies(images, kept)
    out = {name: np.abs(t["detections"][:, c] - t["faces"][:, c]) for c, name in enumerate(CLASS_NAMES)}
    out["all"] = np.abs(t["detections"].sum(1) - t["faces"].sum(1))
    return out
