"""The promotion gate: an alias moves to a candidate version only when a paired bootstrap of
their stored test predictions, on the same prepared data (same fingerprint), puts the lower
bound of the gain above zero. `--force` moves it anyway. A move is recorded for `facemask
rollback`, and `--canary P` gives the candidate P% of the alias's traffic instead (`rollout`)."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import ConfigError
from facemask.core.modelref import REGISTERED_MODEL, parse_models_uri
from facemask.quality.bootstrap import (
    DEFAULT_RESAMPLES,
    ImagePredictions,
    Interval,
    paired_bootstrap,
)
from facemask.quality.rollout import check_canary_percent, move_alias, start_canary
from facemask.tracking import alias_version, model_version, version_metrics

log = logging.getLogger("facemask.quality.promotion")
# What the gate compares: the test split's mAP50-95, as `facemask evaluate` tags a version with it.
GATE_METRIC = "test_mAP50-95"


@dataclass
class PromoteDecision:
    """Whether `candidate` (a version) took `alias` from `champion`, and why (`reason`, one line, with
    the paired interval); `details` holds that paired bootstrap (`BootstrapResult.to_dict()`)."""

    promoted: bool
    reason: str
    name: str
    alias: str
    candidate: str
    details: dict[str, Any] = field(default_factory=dict)
    champion: str | None = None
    candidate_score: float | None = None
    champion_score: float | None = None


def same_test_data(a: dict, b: dict) -> bool:
    """Whether two versions were scored on the same photos: the same prepared dataset, or two
    versions of it that kept their test split (`data prepare --keep-splits`: the test split's
    own hash, the `test.data.split` tag, agrees)."""
    if a.get("test.data.fingerprint") == b.get("test.data.fingerprint"):
        return True
    return bool(a.get("test.data.split")) and a.get("test.data.split") == b.get("test.data.split")


def promotion_decision(
    candidate: str,
    score: float | None,
    holder: str | None,
    holder_score: float | None,
    same_data: bool,
    alias: str = "champion",
    force: bool = False,
    metric: str = GATE_METRIC,
    model_uri: str | None = None,
    difference: Interval | None = None,
) -> tuple[bool, str]:
    """Whether `candidate` takes `alias` from `holder`, and why: the gate, with no registry calls.

    `difference` is the paired bootstrap interval of candidate minus holder on `metric`: the
    candidate is promoted only when its lower bound is above 0. Without it (a holder evaluated
    before predictions were stored) nothing is promoted: a bare `>` promotes noise.
    Raises ConfigError when the candidate (`model_uri`, for the message) was never evaluated.
    """
    if holder == candidate:
        return False, f"version {candidate} already holds @{alias}"
    if force:
        return True, "forced"
    if score is None:
        model_uri = model_uri or f"models:/{REGISTERED_MODEL}/{candidate}"
        raise ConfigError(
            f"{model_uri} has no {metric} yet: run `facemask evaluate --model-uri {model_uri} --data DATA_YAML` first"
        )
    if holder is None:
        return True, f"no version held @{alias}"
    if holder_score is None:
        return True, f"current @{alias} (version {holder}) was never evaluated"
    if not same_data:
        return False, (
            "evaluated on different data (neither the test.data.fingerprint nor the test.data.split tags agree): "
            "not comparable; evaluate both on one dataset, or use --force"
        )
    name = metric.replace("test_", "")
    if difference is None:
        return False, (
            f"version {holder} has no stored per-image predictions to compare with ({name} {score:.4f} vs "
            f"{holder_score:.4f}): run `facemask evaluate` on it again, or use --force"
        )
    if difference.low > 0:
        return True, f"better than version {holder}: Δ {name} {difference.signed()}"
    return False, f"not distinguishable from version {holder}: Δ {name} {difference.signed()}"


def stored_predictions(mv, tracking_uri: str, split: str = "test") -> ImagePredictions | None:
    """The per-image predictions `facemask evaluate` logged for a registered version, or None."""
    source = (mv.tags or {}).get(f"{split}.predictions")
    if not source:
        return None
    import mlflow

    with tempfile.TemporaryDirectory(prefix="facemask-preds-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri)
        return ImagePredictions.load(path)


def paired_difference(
    candidate, current, tracking_uri: str, metric: str, confidence: float, resamples: int
) -> tuple[Interval | None, dict]:
    """The paired bootstrap interval of candidate minus current on `metric`, from the test
    predictions each version stored, and the whole comparison; (None, {}) when one has none."""
    mine, theirs = stored_predictions(candidate, tracking_uri), stored_predictions(current, tracking_uri)
    if mine is None or theirs is None:
        return None, {}
    paired = paired_bootstrap(mine, theirs, CLASS_NAMES, resamples=resamples, confidence=confidence)
    return paired.overall[metric.replace("test_", "")], paired.to_dict()


def promote(
    model_uri: str,
    tracking_uri: str,
    alias: str = "champion",
    force: bool = False,
    metric: str = GATE_METRIC,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    canary: float | None = None,
) -> PromoteDecision:
    """Move `alias` (in the registry of the MLflow store `tracking_uri`) to the candidate only if a paired
    bootstrap of their test predictions says it is better than the current holder at `confidence`
    (the lower bound of the difference > 0).

    Both must have been evaluated (`facemask evaluate`) on the same prepared data; `force` skips
    every check. `canary` (a percentage): a candidate that passes takes that share of the
    alias's default traffic as its challenger, and the alias stays where it is."""
    if not model_uri.startswith("models:/"):
        raise ConfigError(f"{model_uri}: promote takes a registry URI such as models:/{REGISTERED_MODEL}/3")
    if not 0 < confidence < 1:
        raise ConfigError(f"--level {confidence}: a level between 0 and 1, such as 0.95")
    check_canary_percent(canary)  # before the bootstrap, not after it
    name, _, _ = parse_models_uri(model_uri)
    candidate = model_version(model_uri, tracking_uri)
    version = str(candidate.version)
    current = alias_version(name, alias, tracking_uri)
    score = version_metrics(candidate).get(metric)
    best = version_metrics(current).get(metric) if current else None
    same_data = current is not None and same_test_data(candidate.tags or {}, current.tags or {})
    difference, details = None, {}
    if not force and same_data and score is not None and best is not None and str(current.version) != version:
        difference, details = paired_difference(candidate, current, tracking_uri, metric, confidence, resamples)
    promoted, reason = promotion_decision(
        version,
        score,
        str(current.version) if current else None,
        best,
        same_data,
        alias=alias,
        force=force,
        metric=metric,
        model_uri=model_uri,
        difference=difference,
    )
    if promoted and canary is None:
        move_alias(name, alias, version, tracking_uri)
    elif promoted:
        start_canary(name, alias, version, canary, tracking_uri)
    return PromoteDecision(
        promoted,
        reason,
        name,
        alias,
        version,
        champion=str(current.version) if current else None,
        candidate_score=score,
        champion_score=best,
        details=details,
    )
