"""`facemask ensemble`: several registered versions fused into one registered version.

The members' weights and `ensemble.json` (which names them, their fusion weights and the IoU
that joins two boxes) are logged as one model of a run of its own and registered: Serve,
`predict`, `/live` and `facemask evaluate` load it as they load any version
(`detector.EnsembleDetector`). Each member is scored alone on the test split beside the
ensemble, paired, so the registry says what fusing bought and what it costs per image.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import ConfigError
from facemask.core.modelref import ENSEMBLE_FILE, REGISTERED_MODEL
from facemask.detection.detector import load_detector, resolve_model
from facemask.detection.fusion import DEFAULT_IOU
from facemask.quality.bootstrap import DEFAULT_RESAMPLES, paired_bootstrap
from facemask.quality.calibrate import calibrate_version
from facemask.quality.scoring import detect_split, detector_boxes, image_predictions, split_images
from facemask.tracking import RunLogger, log_and_register


@dataclass
class EnsembleResult:
    version: str
    run_id: str
    members: list[str]
    test: dict[str, Any] = field(default_factory=dict)  # the ensemble's and each member's scores, and the gain
    ms_per_image: dict[str, float] = field(default_factory=dict)


def build(members: Sequence[str], out: Path, tracking_uri: str, weights: Sequence[float] | None, iou: float) -> Path:
    """A folder holding each member's weights and the ensemble file naming them; returns the file."""
    if len(members) < 2:
        raise ConfigError(f"an ensemble needs at least 2 models, got {len(members)}")
    if weights is not None and len(weights) != len(members):
        raise ConfigError(f"--weights: {len(weights)} values for {len(members)} models; give one per model")
    if not 0 < iou < 1:
        raise ConfigError(f"--fusion-iou {iou}: between 0 and 1 (0.55 is usual)")
    out.mkdir(parents=True, exist_ok=True)
    listed = []
    for i, uri in enumerate(members, 1):
        info = resolve_model(uri, tracking_uri=tracking_uri)
        if Path(info.weights).suffix != ".pt":
            raise ConfigError(f"{uri}: an ensemble member must be one model's .pt weights, not {info.weights}")
        shutil.copyfile(info.weights, out / f"member-{i}.pt")
        listed.append({"weights": f"member-{i}.pt", "uri": uri, "version": info.version, "run_id": info.run_id})
    spec = {"members": listed, "weights": list(weights) if weights else None, "fusion_iou": iou}
    (out / ENSEMBLE_FILE).write_text(json.dumps(spec, indent=1))
    return out / ENSEMBLE_FILE


def score_members(ensemble: Path, data: Path, imgsz: int, resamples: int) -> tuple[dict[str, Any], dict[str, float]]:
    """The ensemble and each member alone on the test split (every box, as AP wants), paired."""
    images = split_images(data, "test")
    if not images:
        raise ConfigError(f"{data}: no test images to score the ensemble on")
    scored, ms = {}, {}
    spec = json.loads(ensemble.read_text())
    models = {"ensemble": str(ensemble)} | {m["uri"]: str(ensemble.parent / m["weights"]) for m in spec["members"]}
    for name, path in models.items():
        detector = load_detector(path)
        started = time.perf_counter()
        scored[name] = image_predictions(images, detect_split(detector_boxes(detector, imgsz), images))
        ms[name] = (time.perf_counter() - started) * 1000 / len(images)
    test: dict[str, Any] = {}
    for name, predictions in scored.items():
        if name != "ensemble":
            gain = paired_bootstrap(scored["ensemble"], predictions, CLASS_NAMES, resamples=resamples)
            test[name] = gain.to_dict()
    return test, ms


def register_ensemble(
    members: Sequence[str],
    data: Path,
    tracking_uri: str,
    imgsz: int,
    weights: Sequence[float] | None = None,
    iou: float = DEFAULT_IOU,
    name: str = REGISTERED_MODEL,
    experiment: str = "facemask-ensemble",
    resamples: int = DEFAULT_RESAMPLES,
) -> EnsembleResult:
    """Build, score (against each member, paired) and register an ensemble; choose its operating point."""
    with tempfile.TemporaryDirectory(prefix="facemask-ensemble-") as tmp:
        ensemble = build(members, Path(tmp) / "ensemble", tracking_uri, weights, iou)
        test, ms = score_members(ensemble, data, imgsz, resamples)
        run = RunLogger(
            experiment, "ensemble", {"facemask.quality.ensemble": ",".join(members)}, tracking_uri=tracking_uri
        )
        run.log_params({"members": ",".join(members), "weights": str(weights), "fusion_iou": iou, "imgsz": imgsz})
        run.log_metrics(
            {
                f"ms_per_image/{key}": v
                for key, v in zip(["ensemble"] + [f"member_{i}" for i in range(1, len(ms))], ms.values())
            }
        )
        run.log_dict({"gain_over_each_member": test, "ms_per_image": ms}, "ensemble_test.json")
        version = log_and_register(
            run.run_id, ensemble.parent, {"facemask.quality.ensemble": ",".join(members)}, tracking_uri, name=name
        )
        run.end("FINISHED")
    calibrate_version(f"models:/{name}/{version}", data, imgsz, tracking_uri)
    return EnsembleResult(version, run.run_id, list(members), test, ms)
