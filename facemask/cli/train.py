"""`facemask train` and `facemask tune`, and the study's table."""

from __future__ import annotations

from pathlib import Path

import click

from facemask.cli.base import JSON_OPTION, config_options, emit, hidden_alias, main, results_footer
from facemask.core.runtime import configure_runtime, init_ray
from facemask.core.settings import (
    DistributedConfig,
    StudyConfig,
    TrainConfig,
)
from facemask.training.cost import TARGETS


def _parse_overrides(values: tuple[str, ...]) -> dict:
    """Ultralytics train args given as key=value; values parsed as YAML (0.01, true, [1,2])."""
    import yaml

    out = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected key=value, e.g. lr0=0.005 or mosaic=0.5")
        out[key] = yaml.safe_load(raw)
    return out


@main.command("train", context_settings={"ignore_unknown_options": True})
@click.option("--data", type=click.Path(path_type=Path), required=True, help="data.yaml from `facemask data prepare`.")
@config_options(
    TrainConfig,
    (
        "--weights",
        "model",
        {"help": "What training starts from: yolo26s.pt (pretrained), yolo26n.yaml (from scratch) or a path."},
    ),
    ("--epochs", "epochs", {}),
    ("--imgsz", "imgsz", {}),
    ("--batch", "batch", {}),
    ("--device", "device", {"help": "auto, cpu, 0 or 0,1 (several GPUs of one node)."}),
    ("--experiment", "experiment", {}),
    ("--name", "run_name", {"help": "MLflow run name (and output folder)."}),
    ("--project", "project", {"type": click.Path(path_type=Path)}),
    ("--seed", "seed", {}),
    ("--workers", "workers", {"help": "Dataloader workers on a GPU, at most the CPUs given (none on a CPU)."}),
)
@config_options(
    DistributedConfig,
    (
        "--ray-workers",
        "workers",
        {
            "param": "ray_workers",
            "help": "Ray Train workers training one model together (DDP; 1: one process). docs/training.md.",
        },
    ),
    ("--gpus-per-worker", "gpus_per_worker", {"type": float}),
    ("--cpus-per-worker", "cpus_per_worker", {"type": float}),
    (
        "--storage",
        "storage",
        {
            "help": "Checkpoints of a --ray-workers run: a path every node sees, or "
            "s3://... (default: PROJECT/ray-train)."
        },
    ),
    ("--max-failures", "max_failures", {"help": "Restarts of the worker group from its newest checkpoint."}),
)
@click.option("--register", is_flag=True, help="Register best.pt as a new version of facemask-detector.")
@JSON_OPTION
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@hidden_alias("--model", "model")
def train_command(data, overrides, ray_workers, gpus_per_worker, cpus_per_worker, storage, max_failures, as_json, **kw):
    """Train one YOLO26 model, tracked in MLflow. Extra Ultralytics args as key=value.

    The val scores it prints are the last epoch's, on the split that chose the best epoch:
    `facemask evaluate` gives the test split's, with intervals."""
    configure_runtime()
    from facemask.tracking import default_tracking_uri
    from facemask.training.train import train

    cfg = TrainConfig(data=data, overrides=_parse_overrides(overrides), tracking_uri=default_tracking_uri(), **kw)
    # The fields in their order, each option named as its field.
    ray_cfg = DistributedConfig(ray_workers, gpus_per_worker, cpus_per_worker, storage, max_failures)
    if ray_cfg.workers > 1:
        from facemask.training.distributed import check_distributed, train_distributed

        check_distributed(cfg, ray_cfg)
        init_ray()
        result = train_distributed(cfg, ray_cfg)
    else:
        result = train(cfg)
    model = f"models:/{cfg.registered_model}/{result.version}" if result.version else None
    if as_json:
        payload = {
            "run_id": result.run_id,
            "epochs": result.epochs_run,
            "seconds": round(result.seconds, 1),
            "weights": str(result.best),
            "metrics": result.metrics,
            "version": result.version,
            "model_uri": model,
            "tracking_uri": cfg.tracking_uri,
            "experiment": cfg.experiment,
            "logging_failures": result.logging_failures,
        }
        emit(True, payload)
        return
    click.echo(f"run {result.run_id}: {result.epochs_run} epochs in {result.seconds:.0f}s, weights {result.best}")
    click.echo(
        "  last epoch on val (no interval; `facemask evaluate` scores the test split with one): "
        + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if k.startswith("val/"))
    )
    if result.version:
        click.echo(f"  registered {model}")
    if result.logging_failures:
        click.echo(f"  warning: {result.logging_failures} MLflow calls failed; see the log above", err=True)
    click.echo(results_footer(cfg.tracking_uri, cfg.experiment, result.run_id, model, {"weights": result.best}))


def _parse_resources(ctx, param, values: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for item in values:
        name, _, amount = item.partition("=")
        try:
            out[name] = float(amount)
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected NAME=AMOUNT, e.g. trainer=1") from None
    return out


@main.command("tune")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="data.yaml from `facemask data prepare`.")
@config_options(
    StudyConfig,
    ("--weights", "model", {"help": "What every trial starts from: yolo26s.pt, yolo26n.yaml or a path."}),
    ("--trials", "trials", {}),
    ("--epochs", "epochs", {"help": "Epochs per trial (ASHA's max_t)."}),
    ("--imgsz", "imgsz", {}),
    ("--batch", "batch", {}),
    (
        "--search-space",
        "search_space",
        {"type": click.Path(path_type=Path, exists=True), "help": "YAML search space; default: the packaged one."},
    ),
    ("--cpus-per-trial", "cpus_per_trial", {"type": float}),
    (
        "--ray-workers-per-trial",
        "ray_workers_per_trial",
        {
            "help": "Ray Train workers per trial (and the final "
            "retrain), sharing its CPUs and GPUs: one model "
            "trained data-parallel."
        },
    ),
)
@click.option(
    "--gpus-per-trial",
    type=float,
    default=None,
    help="1, 0.5 or 0 (N with --ray-workers-per-trial N); default: 1 if the cluster has GPUs, else 0.",
)
@click.option("--trial-resources", multiple=True, callback=_parse_resources, help="NAME=AMOUNT: a custom Ray resource.")
@config_options(
    StudyConfig,
    ("--max-concurrent", "max_concurrent", {"type": int, "help": "Cap on trials at once (never more than fit)."}),
    ("--time-budget-s", "time_budget_s", {"type": float}),
    ("--storage", "storage", {"help": "Local path or s3://bucket/prefix."}),
    ("--name", "name", {}),
    ("--final-epochs", "final_epochs", {"help": "Retrain the best config this long (0: keep the trial's weights)."}),
    ("--grace-period", "grace_period", {}),
    ("--reduction-factor", "reduction_factor", {"type": float}),
    ("--max-failures", "max_failures", {}),
    ("--metric", "metric", {"help": "Reported metric to optimise (val)."}),
    ("--mode", "mode", {"type": click.Choice(["max", "min"])}),
    (
        "--latency-target",
        "latency_target",
        {
            "type": click.Choice(TARGETS),
            "help": "Also minimise batch-1 latency on this target: the study registers its Pareto front "
            "(docs/tuning.md#score-against-cost).",
        },
    ),
    (
        "--max-latency-ms",
        "max_latency_ms",
        {"type": float, "help": "With --latency-target: gate the front's best version within this budget."},
    ),
    ("--experiment", "experiment", {}),
    ("--seed", "seed", {}),
)
@click.option("--resume", is_flag=True, help="Continue an interrupted study of this --storage/--name.")
@click.option(
    "--auto-resume",
    is_flag=True,
    help="Continue the study this --storage/--name holds, or start it if there is none; a finished one is "
    "reported and not run again (for jobs that may be retried, such as a RayJob).",
)
@click.option("--no-promote", is_flag=True, help="Register but do not move @champion.")
@JSON_OPTION
@hidden_alias("--model", "model")
def tune_command(gpus_per_trial, trial_resources, no_promote, auto_resume, as_json, **kw):
    """Search hyperparameters with Ray Tune (Optuna TPE + ASHA); register and gate the best.

    The best trial's val scores are the selection's (no interval); its test scores have their
    intervals in `facemask evaluate`."""
    from facemask.tracking import default_tracking_uri
    from facemask.training.resources import check_trial_shape
    from facemask.training.train import resolve_model_source
    from facemask.training.tune import saved_study, tune

    kw["tracking_uri"] = default_tracking_uri()
    # What can be refused without a cluster is refused before one starts.
    resolve_model_source(kw["model"])
    check_trial_shape(StudyConfig(gpus_per_trial=gpus_per_trial or 0, trial_resources=trial_resources, **kw))
    if auto_resume:
        state, path, run_id = saved_study(StudyConfig(**kw))
        if state == "finished":
            text = f"study {path} has finished (MLflow run {run_id}); nothing to run again\n"
            text += results_footer(kw["tracking_uri"], kw["experiment"], run_id, None, {"study": path})
            emit(as_json, {"state": "finished", "study": str(path), "parent_run_id": run_id}, text)
            return
        click.echo(f"study {path}: {'resumed' if state == 'interrupted' else 'new'}", err=True)
        kw["resume"] = state == "interrupted"
    configure_runtime()
    init_ray()
    import ray

    if gpus_per_trial is None:  # one GPU per training process, when there are GPUs
        gpus_per_trial = float(kw["ray_workers_per_trial"]) if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    cfg = StudyConfig(gpus_per_trial=gpus_per_trial, promote=not no_promote, trial_resources=trial_resources, **kw)
    result = tune(cfg)
    model = None
    if result.version:
        model = f"models:/{cfg.registered_model}" + ("@champion" if result.promoted else f"/{result.version}")
    if as_json:
        keys = ("parent_run_id", "best_trial", "best_val", "best_config", "counts", "trial_epochs", "test")
        keys += ("test_intervals", "test_objects")
        payload = {"state": "finished", "study": result.storage_path} | {k: getattr(result, k) for k in keys}
        payload |= {"seconds": round(result.seconds, 1), "version": result.version, "model_uri": model}
        payload |= {"promoted": result.promoted, "promote_reason": result.promote_reason}
        payload |= {"importance": result.importance.as_dict() if result.importance is not None else None}
        payload |= {"front": result.front}
        emit(True, payload | {"tracking_uri": cfg.tracking_uri, "experiment": cfg.experiment})
        return
    click.echo(study_table(result))
    click.echo(
        results_footer(cfg.tracking_uri, cfg.experiment, result.parent_run_id, model, {"study": result.storage_path})
    )


def test_line(result) -> str:
    """The study's test scores, each with its interval when it has one."""

    def one(key: str, value: float) -> str:
        low_high = result.test_intervals.get(key)
        return f"{key}={value:.4f}" + (f" [{low_high[0]:.4f}, {low_high[1]:.4f}]" if low_high else "")

    return ", ".join(one(k, v) for k, v in result.test.items())


def study_table(result) -> str:
    lines = [
        f"study {result.storage_path}  (MLflow parent run {result.parent_run_id})",
        f"  trials: {result.counts['finished']} finished, {result.counts['stopped_early']} stopped early "
        f"(ASHA or the time budget), {result.counts['failed']} failed; {result.trial_epochs} trial-epochs "
        f"in {result.seconds:.0f}s",
        f"  best trial {result.best_trial}: val " + ", ".join(f"{k}={v:.4f}" for k, v in result.best_val.items()),
        f"  test (clean split, {result.test_objects} objects, 95% intervals): " + test_line(result),
        f"  registered version {result.version}; "
        + (
            f"promoted to @champion ({result.promote_reason})"
            if result.promoted
            else f"not promoted ({result.promote_reason or 'skipped'})"
        ),
    ]
    if result.importance is not None:
        lines.append("  " + result.importance.line())
    if result.front:
        lines.append(f"  Pareto front, score against latency ({len(result.front)} versions, cheapest first):")
        lines += [
            f"    version {p.get('version', '-')}: {p['latency_ms']:.1f} ms a frame, val {p['objective']:.4f}"
            + (f", test mAP50-95 {p['test'].get('mAP50-95', float('nan')):.4f}" if p.get("test") else "")
            + f"  (trial {p['trial_id']})"
            for p in result.front
        ]
    lines.append("  best params:")
    lines += [
        f"    {k:15s} {v:.5g}" if isinstance(v, float) else f"    {k:15s} {v}"
        for k, v in sorted(result.best_config.items())
    ]
    return "\n".join(lines)
