"""Evaluation on the clean test split (or the user's own labelled photos), and two models compared.

Every evaluation keeps each image's matched predictions (`predictions.npz`, logged with the
report), and reports AP50 and AP50-95 with 95% bootstrap intervals over the images
(`facemask.quality.bootstrap`); `facemask.quality.promotion` gates an alias on those stored predictions.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import InputNotFoundError
from facemask.core.manifest import data_fingerprint
from facemask.core.operating_point import shown_thresholds
from facemask.core.runtime import resolve_device, resolve_path, ultralytics_env, where_relative
from facemask.core.settings import INFERENCE, ReadConfig
from facemask.data.pipeline import prepare_evaluation_set
from facemask.detection.detector import EnsembleDetector, load_detector
from facemask.quality.bootstrap import (
    DEFAULT_RESAMPLES,
    BootstrapResult,
    ImagePredictions,
    bootstrap,
    paired_bootstrap,
)
from facemask.quality.scoring import (
    at_thresholds,
    detect_split,
    detector_boxes,
    image_predictions,
    point_scores,
    split_fingerprint,
    split_images,
)
from facemask.tracking import log_to_run, set_version_tags

log = logging.getLogger("facemask.quality.evaluate")
PREDICTIONS_FILE = "predictions.npz"
HELDOUT = "heldout"  # what an evaluation of the user's own labelled photos is logged as


@dataclass
class EvalResult:
    model_uri: str
    split: str
    overall: dict[str, float]
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[float]]
    fingerprint: str
    run_id: str | None = None
    version: str | None = None
    intervals: BootstrapResult | None = None
    predictions: ImagePredictions | None = None
    # For the user's own labelled images given as --data: what was skipped or dropped, counted.
    problems: dict[str, Any] = field(default_factory=dict)
    split_fingerprint: str | None = None  # the scored split's photos and labels (scoring.split_fingerprint)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("intervals", "predictions")}
        out["intervals"] = self.intervals.to_dict() if self.intervals else None
        return out

    def table(self) -> str:
        lines = [f"{'class':24s} {'P':>6s} {'R':>6s} {'AP50':>6s} {'AP50-95':>8s}"]
        rows = [("all", self.overall)] + list(self.per_class.items())
        for name, m in rows:
            lines.append(f"{name:24s} {m['precision']:6.3f} {m['recall']:6.3f} {m['mAP50']:6.3f} {m['mAP50-95']:8.3f}")
        return "\n".join(lines)


def evaluate(
    model_uri: str,
    data: Path,
    split: str = "test",
    imgsz: int = INFERENCE.imgsz,
    batch: int = 16,
    device: str = "auto",
    log_results: bool = True,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    tracking_uri: str | None = None,
    read: ReadConfig | None = None,
) -> EvalResult:
    """Measure a model on one split of a prepared dataset, with bootstrap intervals over its
    images (`resamples`, seeded); log it, and the per-image predictions, to the model's run and
    version in the MLflow store `uri` (a local weights file has neither, and needs no store).

    `data` may also be a labelled folder or COCO JSON of the user's (VOC, YOLO or COCO, read
    as `read` says): every usable image is then the test set, and what could not be used is
    counted in `problems`.
    """
    given, data = data, resolve_path(data)
    with tempfile.TemporaryDirectory(prefix="facemask-eval-") as tmp:
        problems: dict[str, Any] = {}
        report_as = split
        if data.is_dir() or data.suffix.lower() == ".json":  # the user's own labelled images, all scored
            data, problems = prepare_evaluation_set(data, Path(tmp) / "heldout", read)
            # Logged under its own name: the gate compares scores on the prepared test split only.
            split, report_as = "test", HELDOUT
            if problems.get("items"):
                log.warning("%s: %s (counted; listed in the evaluation report)", given, json.dumps(problems["counts"]))
        elif not data.is_file():
            raise InputNotFoundError(
                f"--data {data}: no such file{where_relative(given)}; create it with "
                "`facemask data prepare`, or pass a labelled folder or COCO JSON (docs/your-own-data.md)"
            )
        return _evaluate(
            model_uri,
            data,
            split,
            report_as,
            problems,
            imgsz,
            batch,
            device,
            log_results,
            resamples,
            seed,
            Path(tmp),
            tracking_uri,
        )


def _evaluate(
    model_uri: str,
    data: Path,
    split: str,
    report_as: str,
    problems: dict[str, Any],
    imgsz: int,
    batch: int,
    device: str,
    log_results: bool,
    resamples: int,
    seed: int,
    tmp: Path,
    tracking_uri: str | None,
) -> EvalResult:
    ultralytics_env()
    detector = load_detector(model_uri, device=resolve_device(device), tracking_uri=tracking_uri)
    if isinstance(detector, EnsembleDetector):  # Ultralytics' validator runs one model: scored from its boxes
        predictions, overall, per_class = scored_from_boxes(detector, data, split, imgsz)
        matrix, save_dir = [], tmp
    else:
        predictions, overall, per_class, matrix, save_dir = validated(detector, data, split, imgsz, batch, device, tmp)
    result = EvalResult(
        model_uri,
        report_as,
        overall,
        per_class,
        matrix,
        data_fingerprint(data),
        run_id=detector.info.run_id,
        version=detector.info.version,
        intervals=bootstrap(predictions, CLASS_NAMES, resamples=resamples, seed=seed),
        predictions=predictions,
        problems=problems,
        split_fingerprint=split_fingerprint(data, split),
    )
    if log_results:
        _log(result, detector.info, save_dir, tracking_uri)
    return result


def validated(detector, data: Path, split: str, imgsz: int, batch: int, device: str, tmp: Path):
    """Ultralytics' validator over one split, each image's matched predictions kept:
    (predictions, overall scores, per-class scores, confusion matrix, the folder of its plots)."""
    from facemask.compat.ultralytics import keep_image_predictions

    kept = keep_image_predictions(detector.model)
    metrics = detector.model.val(
        data=str(data),
        split=split,
        imgsz=imgsz,
        batch=batch,
        device=resolve_device(device),
        plots=True,
        project=tmp,
        name="eval",
        verbose=False,
        workers=0,
    )
    overall, per_class = ultralytics_scores(metrics.box)
    matrix = metrics.confusion_matrix.matrix.tolist()
    predictions = ImagePredictions.from_images(sorted(kept, key=lambda image: image["name"]))
    return predictions, overall, per_class, matrix, Path(metrics.save_dir)


def scored_from_boxes(detector, data: Path, split: str, imgsz: int) -> tuple[ImagePredictions, dict, dict]:
    """A detector the validator cannot run (an ensemble), scored from its boxes of every image
    (`facemask.quality.scoring`): matched predictions, and precision and recall at its operating point."""
    images = split_images(data, split)
    found = detect_split(detector_boxes(detector, imgsz), images)
    predictions = image_predictions(images, found)
    shown = shown_thresholds(None, detector.point, INFERENCE.conf)
    at_point = point_scores(
        images, at_thresholds(found, [shown] * len(CLASS_NAMES) if isinstance(shown, float) else shown), 1
    )
    aps = bootstrap(predictions, CLASS_NAMES, resamples=1)

    def scores(name: str, ap) -> dict[str, float]:
        return {
            "precision": at_point[name]["precision"].value,
            "recall": at_point[name]["recall"].value,
            "mAP50": ap["mAP50"].value,
            "mAP50-95": ap["mAP50-95"].value,
        }

    per_class = {name: scores(name, ap) for name, ap in aps.per_class.items()}
    return predictions, scores("all", aps.overall), per_class


def ultralytics_scores(box) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Precision, recall, mAP50 and mAP50-95 of Ultralytics' box metrics: overall, and per class."""

    def scores(p, r, ap50, ap) -> dict[str, float]:
        return {"precision": float(p), "recall": float(r), "mAP50": float(ap50), "mAP50-95": float(ap)}

    per_class = {CLASS_NAMES[int(c)]: scores(*box.class_result(i)) for i, c in enumerate(box.ap_class_index)}
    return scores(box.mp, box.mr, box.map50, box.map), per_class


def compare(
    model_a: str, model_b: str, data: Path, confidence: float = 0.95, **scoring: Any
) -> tuple[EvalResult, EvalResult, BootstrapResult]:
    """Score two models on the same images and return (A, B, A minus B by a paired bootstrap).

    `scoring` is `evaluate`'s (split, imgsz, batch, device, resamples, seed, uri), the same for both.
    Nothing is logged: a comparison is a question, not a result of either model."""
    scoring = {"resamples": DEFAULT_RESAMPLES, "seed": 0, **scoring, "log_results": False}
    a, b = (evaluate(model, data, **scoring) for model in (model_a, model_b))
    pairing = {"resamples": scoring["resamples"], "seed": scoring["seed"], "confidence": confidence}
    return a, b, paired_bootstrap(a.predictions, b.predictions, CLASS_NAMES, **pairing)


def difference_table(difference: BootstrapResult, a: str, b: str) -> str:
    """Per-class paired differences A - B, each with its interval and what it says."""
    pct = round(difference.confidence * 100)
    lines = [
        f"A = {a}",
        f"B = {b}",
        f"{'class':24s} {'objects':>7s}  {'Δ AP50 (A-B) [' + str(pct) + '%]':>26s}  "
        f"{'Δ AP50-95 (A-B) [' + str(pct) + '%]':>28s}  verdict",
    ]
    rows = [("all", difference.overall, sum(difference.objects.values()))]
    rows += [(k, v, difference.objects.get(k, 0)) for k, v in difference.per_class.items()]
    for name, m, n in rows:
        d = m["mAP50-95"]
        verdict = "A better" if d.low > 0 else "B better" if d.high < 0 else "not distinguishable"
        lines.append(f"{name:24s} {n:7d}  {m['mAP50'].signed():>26s}  {d.signed():>28s}  {verdict}")
    lines.append(
        f"(paired bootstrap: the same {difference.resamples} resamples of {difference.images} images for both, "
        f"seed {difference.seed})"
    )
    return "\n".join(lines)


def _log(result: EvalResult, info, save_dir: Path, tracking_uri: str) -> None:
    prefix = result.split
    flat = {f"{prefix}/{k}": v for k, v in result.overall.items()}
    for name, m in result.per_class.items():
        flat.update({f"{prefix}/{k}/{name}": v for k, v in m.items()})
    if result.intervals is not None:
        flat.update(result.intervals.metrics(f"{prefix}_bootstrap"))
    if info.run_id:
        report = save_dir / f"evaluation_{prefix}.json"
        report.write_text(json.dumps(result.to_dict(), indent=2))
        artifacts = [(report, f"evaluation/{prefix}")]
        if result.predictions is not None:
            result.predictions.save(save_dir / PREDICTIONS_FILE)
            artifacts.append((save_dir / PREDICTIONS_FILE, f"evaluation/{prefix}"))
        artifacts += [(p, f"evaluation/{prefix}") for p in sorted(save_dir.glob("confusion_matrix*.png"))]
        log_to_run(info.run_id, flat, artifacts, tracking_uri)
    if info.name and info.version:
        tags = {f"{prefix}_{k}": round(v, 5) for k, v in result.overall.items()}
        tags[f"{prefix}.data.fingerprint"] = result.fingerprint
        if result.split_fingerprint:
            tags[f"{prefix}.data.split"] = result.split_fingerprint
        if result.intervals is not None:
            for k, i in result.intervals.overall.items():
                tags[f"{prefix}_{k}_interval"] = f"[{i.low:.4f}, {i.high:.4f}]"
            if info.run_id and result.predictions is not None:
                tags[f"{prefix}.predictions"] = f"runs:/{info.run_id}/evaluation/{prefix}/{PREDICTIONS_FILE}"
        set_version_tags(info.name, info.version, tags, tracking_uri)
