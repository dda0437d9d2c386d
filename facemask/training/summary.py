"""What a finished study says: one row per trial (its status, score and cost), the trials' MLflow
runs closed with their final status, the plots, which settings mattered, the best trial and,
with a cost objective, the Pareto front of score against cost, all on the study's parent run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from facemask.core.errors import ConfigError
from facemask.core.settings import StudyConfig
from facemask.data.plots import importance_plot, pareto_plot, study_plots
from facemask.tracking import RunLogger, close_run, find_child_run
from facemask.training.cost import LATENCY
from facemask.training.finish import StudyResult, trial_checkpoint
from facemask.training.importance import param_importance

MLFLOW_STATUS = {"finished": "FINISHED", "stopped_early": "KILLED", "failed": "FAILED"}
VAL_SCORES = ("mAP50-95", "mAP50", "precision", "recall")


def trial_status(result, epochs: int) -> str:
    """finished, stopped_early (ASHA or the time budget) or failed, from a Tune result."""
    if result.error is not None:
        return "failed"
    reached = (result.metrics or {}).get("epoch", 0)
    return "finished" if reached >= epochs else "stopped_early"


def reconcile_trials(tracking_uri: str, parent_run_id: str, rows: list[dict[str, Any]], grid) -> None:
    """Give each trial's child run its final status, tag and weights, whatever its worker managed.

    A trial stopped by the scheduler is torn down soon after its last report, maybe
    before its own upload of best.pt finished; its newest checkpoint always has it (for a
    trial trained by Ray Train workers, the one its rank 0 reported: `trial_checkpoint`).
    """
    checkpoints = {(r.metrics or {}).get("trial_id"): trial_checkpoint(r) for r in grid}
    for row in rows:
        run_id = find_trial_run(tracking_uri, parent_run_id, row["trial_id"])
        if run_id is None:
            continue
        row["run_id"] = run_id
        checkpoint = checkpoints.get(row["trial_id"])
        tags = {"facemask.trial_status": row["status"]}
        if checkpoint is None:
            close_run(run_id, MLFLOW_STATUS[row["status"]], tags, tracking_uri=tracking_uri)
            continue
        with checkpoint.as_directory() as folder:
            close_run(
                run_id, MLFLOW_STATUS[row["status"]], tags, weights=Path(folder) / "best.pt", tracking_uri=tracking_uri
            )


def find_trial_run(tracking_uri: str, parent_run_id: str, trial_id: str) -> str | None:
    """The child run already made for this trial (a retry, a resumed study), if any."""
    return find_child_run(parent_run_id, "facemask.trial_id", trial_id, tracking_uri=tracking_uri)


def pareto_front(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """The scored trials no other trial beats on both score (`mode`) and latency, cheapest first.
    A trial that ties another on both is left out: the front holds one version per point."""
    sign = 1 if mode == "max" else -1
    scored = [r for r in rows if r["objective"] == r["objective"] and r.get(LATENCY) is not None]
    front: list[dict[str, Any]] = []
    for row in sorted(scored, key=lambda r: (r[LATENCY], -sign * r["objective"])):
        if not front or sign * row["objective"] > sign * front[-1]["objective"]:
            front.append(row)
    return front


def trial_rows(cfg: StudyConfig, grid) -> list[dict[str, Any]]:
    """One row per trial: id, status, epochs, its best value of the metric, its config and cost."""
    rows = []
    for r in grid:
        history = r.metrics_dataframe
        values = history[cfg.metric].tolist() if history is not None and cfg.metric in history else []
        best_value = (max(values) if cfg.mode == "max" else min(values)) if values else float("nan")
        row = {
            "trial_id": (r.metrics or {}).get("trial_id", ""),
            "status": trial_status(r, cfg.epochs),
            "epochs": int((r.metrics or {}).get("epoch", 0)),
            "objective": best_value,
            "config": r.config,
        }
        if cfg.latency_target:
            row[LATENCY] = (r.metrics or {}).get(LATENCY)
        rows.append(row)
    return rows


def summarise(
    cfg: StudyConfig, grid, parent: RunLogger, tracking_uri: str, started: float, path: str, space: dict
) -> StudyResult:
    """Per-trial rows, final child-run statuses, plots, which settings mattered, the best trial and
    (with a cost objective) the front, on the parent run."""
    rows = trial_rows(cfg, grid)
    reconcile_trials(tracking_uri, parent.run_id, rows, grid)
    counts = {s: sum(1 for row in rows if row["status"] == s) for s in ("finished", "stopped_early", "failed")}
    if all(row["objective"] != row["objective"] for row in rows):  # every objective NaN: no epoch scored
        raise ConfigError(
            f"no trial of {len(rows)} scored {cfg.metric} on val "
            + (
                f"within --time-budget-s {cfg.time_budget_s:g}: give the study time for at least one epoch"
                if cfg.time_budget_s is not None
                else "(each failed before its first epoch ended: see the trials' errors above)"
            )
        )
    best = grid.get_best_result(cfg.metric, cfg.mode, scope="all")
    # By trial id: two trials may share a config (baseline points repeated), and the registered
    # weights must be the best one's.
    best_id = (best.metrics or {}).get("trial_id")
    best_row = next((row for row in rows if row["trial_id"] == best_id), None) or next(
        row for row in rows if row["config"] == best.config
    )
    best_val = {k: float(v) for k, v in best.metrics.items() if k in VAL_SCORES}
    importance = param_importance(rows, space, cfg.mode)
    front = pareto_front(rows, cfg.mode) if cfg.latency_target else []
    with tempfile.TemporaryDirectory() as tmp:
        plots = study_plots(rows, cfg.metric, Path(tmp)) + importance_plot(importance, cfg.metric, Path(tmp))
        if cfg.latency_target:
            plots += pareto_plot(rows, front, cfg.metric, cfg.latency_target, Path(tmp))
        for plot in plots:
            parent.log_artifact(plot, "plots")
    parent.log_dict(rows, "trials.json")
    parent.log_dict(importance.as_dict(), "importance.json")
    parent.set_tags({"facemask.importance": importance.line()})
    parent.log_metrics({f"importance/{name}": share for name, share in importance.shares.items()})
    parent.log_params({f"best.{k}": v for k, v in best.config.items()} | {"best.trial_id": best_row["trial_id"]})
    epochs = sum(row["epochs"] for row in rows)
    parent.log_metrics(
        {f"best/{k}": v for k, v in best_val.items()}
        | {f"trials/{k}": v for k, v in counts.items()}
        | {"trials/epochs": epochs}
        | ({"front/size": len(front)} if cfg.latency_target else {})
    )
    result = StudyResult(
        parent.run_id,
        dict(best.config),
        best_row["trial_id"],
        best_val,
        counts,
        epochs,
        time.perf_counter() - started,
        path,
        trials=rows,
        importance=importance,
    )
    result.front = [{"trial_id": r["trial_id"], "objective": r["objective"], LATENCY: r[LATENCY]} for r in front]
    return result
