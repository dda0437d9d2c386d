"""After the search: the best configuration retrained (or its weights kept), scored on the
clean test split, registered, and put to the promotion gate."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from facemask.core.classes import CLASS_NAMES
from facemask.core.manifest import data_fingerprint
from facemask.core.runtime import check_given_gpus, gpu_as_cpu, resolve_path
from facemask.core.settings import StudyConfig, TrainConfig
from facemask.data.sampling import data_with_repeats
from facemask.quality.budget import FRONT_TAG, choose_within_budget, latency_tag
from facemask.quality.calibrate import calibrate_version
from facemask.quality.evaluate import evaluate
from facemask.quality.promotion import promote
from facemask.tracking import RunLogger, list_versions, log_and_register, set_version_tags
from facemask.training.cost import LATENCY
from facemask.training.distributed import train_distributed
from facemask.training.resources import on_trial_resources, trial_workers
from facemask.training.space import shape_of
from facemask.training.train import TrainResult, train

log = logging.getLogger("facemask.training.tune")


@dataclass
class StudyResult:
    parent_run_id: str | None
    best_config: dict[str, Any]
    best_trial: str
    best_val: dict[str, float]
    counts: dict[str, int]
    trial_epochs: int
    seconds: float
    storage_path: str
    test: dict[str, float] = field(default_factory=dict)
    # 95% bootstrap intervals of the test scores ([low, high] per metric) and the objects behind them.
    test_intervals: dict[str, list[float]] = field(default_factory=dict)
    test_objects: int | None = None
    version: str | None = None
    promoted: bool = False
    promote_reason: str = ""
    trials: list[dict[str, Any]] = field(default_factory=list)
    # Which settings mattered (facemask.training.importance), or why it is not shown.
    importance: Any = None
    # With a cost objective: the Pareto front, cheapest first, each point's trial, score, latency and
    # (once registered) its version and test scores.
    front: list[dict[str, Any]] = field(default_factory=list)


def final_training(cfg: TrainConfig) -> TrainResult:
    """The final retrain, inside `on_trial_resources`."""
    gpus = check_given_gpus("the study's final retrain")
    return train(replace(cfg, device="cpu") if gpus and gpu_as_cpu() else cfg)


SIDES = ("low", "high")  # an interval's bounds, logged as test/<metric>_low and _high


def test_scores(model_uri: str, data: Path, imgsz: int, device: str, tracking_uri: str) -> dict[str, Any]:
    """The registered model's scores on the test split with their bootstrap intervals, inside
    `on_trial_resources`: {"overall": {metric: value}, "intervals": {metric: [low, high]}, "objects": n}."""
    gpus = check_given_gpus("the study's test-split scoring")
    device = "cpu" if gpus and gpu_as_cpu() else device
    scored = evaluate(model_uri, data, imgsz=imgsz, device=device, tracking_uri=tracking_uri)
    intervals = scored.intervals
    return {
        "overall": scored.overall,
        "intervals": {k: [i.low, i.high] for k, i in intervals.overall.items()} if intervals else {},
        "objects": sum(intervals.objects.values()) if intervals else None,
    }


def trial_checkpoint(result):
    """A trial's newest checkpoint, or None: Tune's own, or for a trial trained by Ray Train
    workers the one its rank 0 reported, which Tune receives by path only (the
    `checkpoint_path` metric of Ray's TuneReportCallback), never as the result's checkpoint."""
    if result.checkpoint is not None:
        return result.checkpoint
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    path = (result.metrics or {}).get(CHECKPOINT_PATH_KEY)
    if not path:
        return None
    from ray.train import Checkpoint

    return Checkpoint(path)


def finalise(cfg: StudyConfig, grid, result: StudyResult, parent: RunLogger, tracking_uri: str, data: Path) -> None:
    """Retrain (optional), register, evaluate on the clean test split, and gate the promotion; with a
    cost objective, every version on the front (`finalise_front`)."""
    if cfg.latency_target:
        finalise_front(cfg, grid, result, parent, tracking_uri, data)
        return
    result.version = register_trial(cfg, grid, result, result.best_trial, parent, tracking_uri, data, {})
    model_uri = f"models:/{cfg.registered_model}/{result.version}"
    result.test, result.test_intervals, result.test_objects = score_version(
        cfg, model_uri, data, cfg.imgsz, tracking_uri
    )
    bounds = {f"test/{k}_{side}": v for k, pair in result.test_intervals.items() for side, v in zip(SIDES, pair)}
    parent.log_metrics({f"test/{k}": v for k, v in result.test.items()} | bounds)
    parent.set_tags({"facemask.registered_version": result.version})
    if cfg.promote:
        decision = promote(model_uri, tracking_uri)
        result.promoted, result.promote_reason = decision.promoted, decision.reason


def register_trial(
    cfg: StudyConfig,
    grid,
    result: StudyResult,
    trial_id: str,
    parent: RunLogger,
    tracking_uri: str,
    data: Path,
    tags: dict[str, Any],
) -> str:
    """A trial's configuration as a registered version, tagged with `tags`: retrained for
    cfg.final_epochs, or its own best weights kept. Returns the version."""
    row = next(row for row in result.trials if row["trial_id"] == trial_id)
    if cfg.final_epochs:
        return retrain(cfg, dict(row["config"]), parent, tracking_uri, data, trial_id, tags)
    trial = next(r for r in grid if (r.metrics or {}).get("trial_id") == trial_id)
    checkpoint = trial_checkpoint(trial)
    val = result.best_val if trial_id == result.best_trial else {cfg.metric: row["objective"]}
    tags = {f"val_{k}": round(v, 5) for k, v in val.items()} | {"data.fingerprint": data_fingerprint(data)} | tags
    # The copy lives only until MLflow holds it: a study registers many versions.
    with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory(prefix="facemask-best-") as scratch:
        weights = Path(scratch) / "best.pt"
        shutil.copyfile(Path(folder) / "best.pt", weights)
        return log_and_register(row.get("run_id"), weights, tags, tracking_uri=tracking_uri, name=cfg.registered_model)


def retrain(
    cfg: StudyConfig,
    overrides: dict[str, Any],
    parent: RunLogger,
    tracking_uri: str,
    data: Path,
    trial_id: str,
    tags: dict[str, Any],
) -> str:
    """A trial's configuration trained again for cfg.final_epochs, the way the trials were; its version."""
    # The repeated dataset and a distributed retrain's folder are scratch: the version is in MLflow.
    with tempfile.TemporaryDirectory(prefix="facemask-final-") as folder:
        scratch = Path(folder)
        threshold = overrides.pop("repeat_threshold", None)
        shape = shape_of(overrides, cfg.model, cfg.imgsz)
        train_data = data
        if threshold:
            train_data, _ = data_with_repeats(data, float(threshold), cfg.seed, scratch / "data", CLASS_NAMES)
        final_cfg = cfg.train_config(
            **shape,
            data=train_data,
            epochs=cfg.final_epochs,
            run_name=f"{cfg.name}-final" + (f"-{trial_id}" if cfg.latency_target else ""),
            tracking_uri=tracking_uri,
            parent_run_id=parent.run_id,
            overrides=overrides,
            register=True,
            registered_model=cfg.registered_model,
        )
        if cfg.ray_workers_per_trial > 1:  # the final retrain is trained the way the trials were
            workdir = scratch / "train"
            workdir.mkdir()
            final = train_distributed(
                replace(final_cfg, device="auto", project=workdir),
                trial_workers(cfg.cpus_per_trial, cfg.gpus_per_trial, cfg.ray_workers_per_trial, workdir),
            )
        else:
            # Its folder as the driver resolves it: the task's own working directory is Ray's.
            final = on_trial_resources(cfg, final_training, replace(final_cfg, project=resolve_path(final_cfg.project)))
    if tags:
        set_version_tags(cfg.registered_model, final.version, tags, tracking_uri)
    return final.version


def score_version(cfg: StudyConfig, model_uri: str, data: Path, imgsz: int, tracking_uri: str):
    """A registered version's test scores, intervals and object count, then its operating point."""
    scored = on_trial_resources(cfg, test_scores, model_uri, data, imgsz, cfg.device, tracking_uri)
    on_trial_resources(cfg, calibrate_version, model_uri, data, imgsz, tracking_uri)
    return scored["overall"], scored["intervals"], scored["objects"]


def finalise_front(
    cfg: StudyConfig, grid, result: StudyResult, parent: RunLogger, tracking_uri: str, data: Path
) -> None:
    """Every version on the Pareto front registered, tagged with its cost, scored on test and
    calibrated at its own size; then, with cfg.max_latency_ms, the best within it put to the gate."""
    target = cfg.latency_target
    for point in result.front:
        row = next(row for row in result.trials if row["trial_id"] == point["trial_id"])
        imgsz = int(row["config"].get("imgsz", cfg.imgsz))
        tags = {latency_tag(target): point[LATENCY], FRONT_TAG: cfg.name, "latency_target": target}
        tags |= {"facemask.imgsz": imgsz, "facemask.model": str(row["config"].get("model", cfg.model))}
        version = register_trial(cfg, grid, result, point["trial_id"], parent, tracking_uri, data, tags)
        model_uri = f"models:/{cfg.registered_model}/{version}"
        test, intervals, objects = score_version(cfg, model_uri, data, imgsz, tracking_uri)
        point.update(version=version, imgsz=imgsz, test=test, test_intervals=intervals, test_objects=objects)
    parent.log_dict(result.front, "front.json")
    parent.set_tags({"facemask.front_versions": ",".join(str(p["version"]) for p in result.front)})
    # The front's best scorer stands for the study in its summary (the best trial is always on it).
    best = max(result.front, key=lambda p: p["objective"] if cfg.mode == "max" else -p["objective"])
    result.version, result.test = best["version"], best["test"]
    result.test_intervals, result.test_objects = best["test_intervals"], best["test_objects"]
    if not (cfg.promote and cfg.max_latency_ms is not None):
        result.promote_reason = (
            f"a front of {len(result.front)} versions registered; none promoted: choose one with "
            f"`facemask promote --max-latency-ms MS --latency-target {target} --study {cfg.name}`"
        )
        return
    registered = {str(p["version"]) for p in result.front}
    versions = [v for v in list_versions(cfg.registered_model, tracking_uri) if v["version"] in registered]
    choice = choose_within_budget(versions, target, cfg.max_latency_ms, f"study {cfg.name}'s front")
    result.version = choice.version
    decision = promote(f"models:/{cfg.registered_model}/{choice.version}", tracking_uri)
    result.promoted, result.promote_reason = decision.promoted, f"{choice.reason}; {decision.reason}"
