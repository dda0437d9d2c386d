"""Evaluation on the clean test split, and the promotion gate that uses its result.

The gate compares test mAP50-95 measured on the same prepared data (same fingerprint):
numbers from different test sets are not comparable, so it refuses unless forced.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facemask.classes import CLASS_NAMES
from facemask.detector import load_detector
from facemask.tracking import (
    REGISTERED_MODEL,
    alias_version,
    log_to_run,
    model_version,
    parse_models_uri,
    set_alias,
    set_version_tags,
    version_metrics,
)
from facemask.train import data_fingerprint, resolve_device, ultralytics_env

log = logging.getLogger("facemask.evaluate")
GATE_METRIC = "test_mAP50-95"


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
    imgsz: int = 640,
    batch: int = 16,
    device: str = "auto",
    log_results: bool = True,
) -> EvalResult:
    """Measure a model on one split of a prepared dataset; log it to the model's run and version."""
    data = Path(data).expanduser().resolve()
    if not data.is_file():
        raise FileNotFoundError(f"--data {data}: no such file; create it with `facemask data prepare`")
    ultralytics_env()
    detector = load_detector(model_uri, device=resolve_device(device))
    with tempfile.TemporaryDirectory(prefix="facemask-eval-") as tmp:
        metrics = detector.model.val(
            data=str(data), split=split, imgsz=imgsz, batch=batch, device=resolve_device(device), plots=True,
            project=tmp, name="eval", verbose=False, workers=0,
        )
        box = metrics.box
        overall = {"precision": float(box.mp), "recall": float(box.mr), "mAP50": float(box.map50), "mAP50-95": float(box.map)}
        per_class = {}
        for i, class_index in enumerate(box.ap_class_index):
            p, r, ap50, ap = box.class_result(i)
            per_class[CLASS_NAMES[int(class_index)]] = {"precision": float(p), "recall": float(r), "mAP50": float(ap50), "mAP50-95": float(ap)}
        matrix = metrics.confusion_matrix.matrix.tolist()
        result = EvalResult(model_uri, split, overall, per_class, matrix, data_fingerprint(data),
                            run_id=detector.info.run_id, version=detector.info.version)
        if log_results:
            _log(result, detector.info, Path(metrics.save_dir))
    return result


def _log(result: EvalResult, info, save_dir: Path) -> None:
    prefix = result.split
    flat = {f"{prefix}/{k}": v for k, v in result.overall.items()}
    for name, m in result.per_class.items():
        flat.update({f"{prefix}/{k}/{name}": v for k, v in m.items()})
    if info.run_id:
        report = save_dir / f"evaluation_{prefix}.json"
        report.write_text(json.dumps(result.to_dict(), indent=2))
        artifacts = [(report, f"evaluation/{prefix}")]
        artifacts += [(p, f"evaluation/{prefix}") for p in sorted(save_dir.glob("confusion_matrix*.png"))]
        log_to_run(info.run_id, flat, artifacts)
    if info.name and info.version:
        tags = {f"{prefix}_{k}": round(v, 5) for k, v in result.overall.items()}
        tags[f"{prefix}.data.fingerprint"] = result.fingerprint
        set_version_tags(info.name, info.version, tags)


@dataclass
class PromoteDecision:
    promoted: bool
    reason: str
    name: str
    alias: str
    candidate: str
    champion: str | None = None
    candidate_score: float | None = None
    champion_score: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def promote(model_uri: str, alias: str = "champion", force: bool = False, metric: str = GATE_METRIC) -> PromoteDecision:
    """Move `alias` to the candidate only if its test score beats the current holder's.

    Both must have been evaluated (`facemask evaluate`) on the same prepared data;
    `force` skips every check.
    """
    if not model_uri.startswith("models:/"):
        raise ValueError(f"{model_uri}: promote takes a registry URI such as models:/{REGISTERED_MODEL}/3")
    name, _, _ = parse_models_uri(model_uri)
    candidate = model_version(model_uri)
    version = str(candidate.version)
    current = alias_version(name, alias)

    def decide(promoted: bool, reason: str) -> PromoteDecision:
        if promoted:
            set_alias(name, alias, version)
        return PromoteDecision(
            promoted, reason, name, alias, version,
            champion=str(current.version) if current else None,
            candidate_score=version_metrics(candidate).get(metric),
            champion_score=version_metrics(current).get(metric) if current else None,
        )

    if current is not None and str(current.version) == version:
        return decide(False, f"version {version} already holds @{alias}")
    if force:
        return decide(True, "forced")
    score = version_metrics(candidate).get(metric)
    if score is None:
        raise ValueError(
            f"{model_uri} has no {metric} yet: run `facemask evaluate --model-uri {model_uri} --data DATA_YAML` first"
        )
    if current is None:
        return decide(True, f"no version held @{alias}")
    best = version_metrics(current).get(metric)
    if best is None:
        return decide(True, f"current @{alias} (version {current.version}) was never evaluated")
    fingerprint_key = "test.data.fingerprint"
    ours, theirs = (candidate.tags or {}).get(fingerprint_key), (current.tags or {}).get(fingerprint_key)
    if ours != theirs:
        return decide(False, f"evaluated on different data ({ours} vs {theirs}): not comparable; use --force")
    if score > best:
        return decide(True, f"{metric} {score:.4f} > {best:.4f}")
    return decide(False, f"{metric} {score:.4f} does not beat {best:.4f} of version {current.version}")
