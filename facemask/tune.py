"""`tune(cfg)`: a Ray Tune study of YOLO26 hyperparameters with Optuna (TPE) and ASHA.

One MLflow parent run per study, one nested child run per trial. Each trial reports
every epoch through `ray.tune.report` with its weights as a checkpoint, so ASHA can stop
it and a crashed trial resumes from its last epoch. Library code here never calls
`ray.init()` or `ray.shutdown()`: the caller owns the cluster.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from facemask.classes import CLASS_NAMES
from facemask.distributed import check_workers_fit, node_resources, train_distributed
from facemask.errors import ConfigError, InputNotFoundError, StudyInterrupted
from facemask.evaluate import evaluate, promote
from facemask.lifecycle import at_forced_stop
from facemask.manifest import data_fingerprint
from facemask.plots import study_plots
from facemask.runtime import check_given_gpus, gpu_as_cpu, resolve_path, results_base, where_relative
from facemask.sampling import data_with_repeats
from facemask.settings import DistributedConfig, StudyConfig, TrainConfig
from facemask.tracking import (
    RunLogger,
    check_tracking_reachable,
    client,
    close_run,
    end_open_runs,
    find_child_run,
    find_tagged_run,
    log_and_register,
    set_process_store,
    study_tracking_uri,
)
from facemask.train import TrainResult, epoch_metrics, per_epoch, train, tune_metric_names

log = logging.getLogger("facemask.tune")

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
# Ultralytics train arguments that make sense to search; anything else is a typo or not a hyperparameter.
TUNABLE = (
    "lr0",
    "lrf",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "warmup_momentum",
    "warmup_bias_lr",
    "optimizer",
    "box",
    "cls",
    "dfl",
    "hsv_h",
    "hsv_s",
    "hsv_v",
    "degrees",
    "translate",
    "scale",
    "shear",
    "perspective",
    "flipud",
    "fliplr",
    "bgr",
    "mosaic",
    "mixup",
    "cutmix",
    "copy_paste",
    "close_mosaic",
    "erasing",
    "cos_lr",
    "nbs",
    "dropout",
    "cls_pw",
    # Not an Ultralytics argument: each trial trains on its own repeat-factor list (facemask.sampling).
    "repeat_threshold",
)


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
    version: str | None = None
    promoted: bool = False
    promote_reason: str = ""
    trials: list[dict[str, Any]] = field(default_factory=list)


def load_search_space(path: Path | None = None) -> tuple[dict[str, dict], list[dict[str, Any]]]:
    """Read and validate a search-space YAML: (space, points to evaluate first).

    `baseline` is one point or a list of points. Unknown keys name the valid ones.
    """
    text = (
        Path(path).read_text()
        if path
        else resources.files("facemask").joinpath("configs/search_space.yaml").read_text()
    )
    where = str(path or "the packaged search_space.yaml")
    doc = yaml.safe_load(text) or {}
    space, baseline = doc.get("space") or {}, doc.get("baseline") or []
    points = [baseline] if isinstance(baseline, dict) else list(baseline)
    if not space:
        raise ConfigError(f"{where}: no `space:` mapping of parameter -> distribution")
    for key in list(space) + [k for point in points for k in point]:
        if key not in TUNABLE:
            raise ConfigError(f"{where}: unknown hyperparameter {key!r}; valid: {', '.join(TUNABLE)}")
    for key, spec in space.items():
        kind = (spec or {}).get("type")
        if kind not in DISTRIBUTIONS:
            raise ConfigError(f"{where}: {key}: type must be one of {', '.join(DISTRIBUTIONS)}, got {kind!r}")
        if kind == "choice" and not spec.get("values"):
            raise ConfigError(f"{where}: {key}: a choice needs `values: [...]`")
        if kind != "choice" and not (
            isinstance(spec.get("low"), (int, float))
            and isinstance(spec.get("high"), (int, float))
            and spec["low"] < spec["high"]
        ):
            raise ConfigError(f"{where}: {key}: needs numeric low < high")
    for point in points:
        missing = set(point) - set(space)
        if missing:
            raise ConfigError(f"{where}: baseline sets {sorted(missing)} which are not in `space`")
    return space, points


def to_tune_space(space: dict[str, dict]) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "choice":
            out[key] = tune.choice(list(spec["values"]))
        elif kind == "randint":
            out[key] = tune.randint(int(spec["low"]), int(spec["high"]))
        else:
            out[key] = getattr(tune, kind)(float(spec["low"]), float(spec["high"]))
    return out


# What a distributed trial's own function reserves: it only drives its Ray Train run, whose
# controller reserves nothing and whose workers share the rest of the trial's CPUs.
TRIAL_DRIVER_CPUS = 0.01


def check_trial_shape(cfg: StudyConfig) -> None:
    """Refuse, before any cluster is joined, a trial whose parts cannot work together."""
    for option, value in (("--trials", cfg.trials), ("--epochs", cfg.epochs)):
        if value < 1:
            raise ConfigError(f"{option} {value}: at least 1")
    if cfg.cpus_per_trial <= 0:
        raise ConfigError("--cpus-per-trial must be > 0")
    workers = cfg.ray_workers_per_trial
    if workers < 1:
        raise ConfigError("--ray-workers-per-trial must be at least 1")
    if cfg.gpus_per_trial > 1 and workers == 1:
        # One training process drives one GPU: the rest would sit idle.
        gpus = math.ceil(cfg.gpus_per_trial)
        raise ConfigError(
            f"--gpus-per-trial {cfg.gpus_per_trial:g}: one training process uses one GPU; add "
            f"--ray-workers-per-trial {gpus} to train each trial on {gpus} GPUs (one Ray Train worker "
            "each), or use --gpus-per-trial 1 to run more trials at once"
        )
    if workers > 1 and cfg.gpus_per_trial / workers not in (0, 1):
        raise ConfigError(
            f"--gpus-per-trial {cfg.gpus_per_trial:g} over {workers} workers: each worker needs 0 or 1 "
            f"whole GPU; use --gpus-per-trial {workers} or 0"
        )
    if workers > 1 and cfg.trial_resources:
        raise ConfigError(
            "--trial-resources pins a one-process trial to a node; a trial of several Ray Train "
            "workers is placed by Ray Train: drop --trial-resources"
        )
    if workers > 1 and cfg.cpus_per_trial < workers:
        # A DDP rank with less than a core only slows its peers: every step waits for the slowest.
        raise ConfigError(
            f"--ray-workers-per-trial {workers} needs one CPU per worker, and --cpus-per-trial is "
            f"{cfg.cpus_per_trial:g}: use --ray-workers-per-trial {max(1, math.floor(cfg.cpus_per_trial))}"
            f" or fewer, or --cpus-per-trial {workers} on a cluster with {workers}+ CPUs"
        )


def max_concurrency(cfg: StudyConfig, cluster: dict[str, float], nodes: list[dict[str, float]] | None = None) -> int:
    """Trials that fit the cluster at once; never more than asked or than there are trials.

    `nodes` (each alive node's resources) also refuses a trial that fits the cluster's sum
    but no node: Ray would wait for it without end.
    """
    cpus, gpus = cluster.get("CPU", 0), cluster.get("GPU", 0)
    check_trial_shape(cfg)
    workers = cfg.ray_workers_per_trial
    if cfg.gpus_per_trial > 0 and gpus < cfg.gpus_per_trial:
        raise ConfigError(
            f"--gpus-per-trial {cfg.gpus_per_trial}: the cluster has {gpus:g} GPUs; use 0 to train on CPU"
        )
    if nodes is not None:
        if workers > 1:
            shares = trial_workers(cfg.cpus_per_trial, cfg.gpus_per_trial, workers, "")
            check_workers_fit(
                workers,
                shares.cpus_per_worker,
                shares.gpus_per_worker,
                nodes,
                driver_cpus=TRIAL_DRIVER_CPUS,
                flags="--ray-workers-per-trial, --cpus-per-trial or --gpus-per-trial",
            )
        elif not any(all(n.get(k, 0) + 1e-9 >= v for k, v in trial_request(cfg).items()) for n in nodes):
            biggest = max((n.get("CPU", 0) for n in nodes), default=0)
            raise ConfigError(
                f"a trial asks for {trial_request(cfg)} in one process, and no node has that much (the "
                f"largest has {biggest:g} CPUs): lower --cpus-per-trial, or train each trial across "
                "nodes with --ray-workers-per-trial N"
            )
    fits = math.floor(cpus / cfg.cpus_per_trial + 1e-9)
    if cfg.gpus_per_trial > 0:
        fits = min(fits, math.floor(gpus / cfg.gpus_per_trial + 1e-9))
    for name, amount in cfg.trial_resources.items():
        have = cluster.get(name, 0)
        if have < amount:
            raise ConfigError(f"--trial-resources {name}={amount:g}: the cluster has {have:g} of {name!r}")
        fits = min(fits, math.floor(have / amount + 1e-9))
    if fits < 1:
        raise ConfigError(f"--cpus-per-trial {cfg.cpus_per_trial}: the cluster has only {cpus:g} CPUs")
    return max(1, min(fits, cfg.max_concurrent or fits, cfg.trials))


def trial_request(cfg: StudyConfig) -> dict[str, float]:
    """What one trial's function reserves, in Ray's resource names."""
    if cfg.ray_workers_per_trial > 1:
        return {"CPU": TRIAL_DRIVER_CPUS}
    return {
        "CPU": cfg.cpus_per_trial,
        **({"GPU": cfg.gpus_per_trial} if cfg.gpus_per_trial else {}),
        **cfg.trial_resources,
    }


def run_trial(config: dict[str, Any], base: dict[str, Any]) -> None:
    """The Tune trainable: one YOLO training that reports each epoch with a checkpoint."""

    import ray
    from ray import tune

    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    gpus = check_given_gpus(f"trial {trial_id}")
    set_process_store(base["tracking_uri"])
    study: StudyConfig = base["study"]
    workdir = Path(base["workdir"]) / trial_id
    config = dict(config)
    data = Path(base["data"])
    threshold = config.pop("repeat_threshold", None)
    if threshold:
        data, _ = data_with_repeats(data, float(threshold), study.seed, workdir / "data", CLASS_NAMES)
    cfg = study.train_config(
        data=data,
        run_name=f"trial-{trial_id}",
        tracking_uri=base["tracking_uri"],
        project=workdir,
        overrides=dict(config),
        parent_run_id=base["parent_run_id"],
        tags={
            "facemask.trial_id": trial_id,
            "facemask.study": study.name,
            "facemask.node_id": ray.get_runtime_context().get_node_id(),
            "facemask.resources": json.dumps(ctx.get_trial_resources().required_resources, sort_keys=True),
            "facemask.gpus": ",".join(gpus),
        },
        plots=False,
    )
    if gpus and gpu_as_cpu():
        cfg = replace(cfg, device="cpu")
    workers = study.ray_workers_per_trial
    if workers > 1:
        # The trial drives a Ray Train run: its rank 0 reports each epoch to Tune, and a
        # retried trial resumes from that run's own newest checkpoint and MLflow run.
        train_distributed(
            replace(cfg, device="auto"),
            trial_workers(study.cpus_per_trial, study.gpus_per_trial, workers, workdir),
            report_to_tune=True,
        )
        return
    run_id, resume_from = find_trial_run(base["tracking_uri"], base["parent_run_id"], trial_id), None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = json.loads((Path(folder) / "trial.json").read_text())
            run_id = state.get("run_id") or run_id
            resume_from = workdir / "resume" / "last.pt"
            resume_from.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(folder) / "last.pt", resume_from)
            log.warning("trial %s resumes after epoch %s from its checkpoint", trial_id, state.get("epoch"))
    holder: dict[str, Any] = {"run_id": run_id}

    @per_epoch
    def report(trainer) -> None:
        metrics = epoch_metrics(trainer)
        payload = {"epoch": trainer.epoch + 1, **tune_metric_names(metrics)}
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("last", "best"):
                source = Path(getattr(trainer, name))
                if source.is_file():
                    shutil.copyfile(source, Path(tmp) / f"{name}.pt")
            (Path(tmp) / "trial.json").write_text(json.dumps({"run_id": holder["run_id"], "epoch": trainer.epoch + 1}))
            tune.report(payload, checkpoint=tune.Checkpoint.from_directory(tmp))

    callbacks: dict[str, list[Callable]] = {"on_fit_epoch_end": [report]}
    for event, fns in (base.get("trial_callbacks") or {}).items():
        callbacks.setdefault(event, []).extend(fns)
    train(
        replace(cfg, run_id=run_id, resume_from=resume_from),
        callbacks=callbacks,
        on_run=lambda rid: holder.update(run_id=holder["run_id"] or rid),
    )


def trial_workers(cpus_per_trial: float, gpus_per_trial: float, workers: int, workdir: Path | str) -> DistributedConfig:
    """A trial's CPUs and GPUs shared equally by its Ray Train workers, less what its driver
    reserves, so that the whole trial takes exactly `cpus_per_trial`."""
    return DistributedConfig(
        workers=workers,
        cpus_per_worker=(cpus_per_trial - TRIAL_DRIVER_CPUS) / workers,
        gpus_per_worker=gpus_per_trial / workers,
        storage=str(Path(workdir) / "ray-train"),
        max_failures=1,
    )


def find_trial_run(uri: str, parent_run_id: str, trial_id: str) -> str | None:
    """The child run already made for this trial (a retry, a resumed study), if any."""
    return find_child_run(parent_run_id, "facemask.trial_id", trial_id, uri=uri)


def interrupted(grid, cfg: StudyConfig, elapsed: float) -> bool:
    """Tune returns normally after SIGINT; tell that apart from a study that ran its course."""
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    budget_spent = cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s
    return unfinished > 0 and not budget_spent or (len(grid) < cfg.trials and not budget_spent)


def trial_status(result, epochs: int) -> str:
    """finished, stopped_early (ASHA or the time budget) or failed, from a Tune result."""
    if result.error is not None:
        return "failed"
    reached = (result.metrics or {}).get("epoch", 0)
    return "finished" if reached >= epochs else "stopped_early"


MLFLOW_STATUS = {"finished": "FINISHED", "stopped_early": "KILLED", "failed": "FAILED"}


def reconcile_trials(uri: str, parent_run_id: str, rows: list[dict[str, Any]], grid) -> None:
    """Give each trial's child run its final status, tag and weights, whatever its worker managed.

    A trial stopped by the scheduler is torn down soon after its last report, maybe
    before its own upload of best.pt finished; its Tune checkpoint always has it.
    """
    checkpoints = {(r.metrics or {}).get("trial_id"): r.checkpoint for r in grid}
    for row in rows:
        run_id = find_trial_run(uri, parent_run_id, row["trial_id"])
        if run_id is None:
            continue
        row["run_id"] = run_id
        checkpoint = checkpoints.get(row["trial_id"])
        tags = {"facemask.trial_status": row["status"]}
        if checkpoint is None:
            close_run(run_id, MLFLOW_STATUS[row["status"]], tags, uri=uri)
            continue
        with checkpoint.as_directory() as folder:
            close_run(run_id, MLFLOW_STATUS[row["status"]], tags, weights=Path(folder) / "best.pt", uri=uri)


def study_path(cfg: StudyConfig) -> tuple[str, str]:
    """(storage, the study's folder in it): a local --storage resolved as every path is, a URI as given."""
    storage = cfg.storage if "://" in cfg.storage else str(resolve_path(cfg.storage))
    return storage, f"{storage.rstrip('/')}/{cfg.name}"


def saved_study(cfg: StudyConfig) -> tuple[str, str, str | None]:
    """What --storage/--name holds, for a job that may run again (a retried RayJob):
    (state, the study's folder, its MLflow parent run if any). The state is "none", or
    "interrupted" (Tune can restore it), or "finished" (restorable, and its parent run ended
    FINISHED: running it again would only retrain and register the same study twice)."""
    from ray import tune as rt

    _, path = study_path(cfg)
    if not rt.Tuner.can_restore(path):
        return "none", path, None
    run_id = find_tagged_run(cfg.experiment, "facemask.study_path", path, uri=cfg.tracking_uri)
    if run_id and client(cfg.tracking_uri).get_run(run_id).info.status == "FINISHED":
        return "finished", path, run_id
    return "interrupted", path, run_id


def tune(cfg: StudyConfig, trial_callbacks: dict[str, list[Callable]] | None = None) -> StudyResult:
    """Run (or with cfg.resume, continue) a study; register and gate its best model.

    `trial_callbacks` are extra Ultralytics callbacks run inside every trial (used to
    inject faults in tests). Expects a connected Ray cluster (`ray.init()` by the caller).
    """
    import ray
    from ray import tune as rt

    space, baseline = load_search_space(cfg.search_space)
    data = resolve_path(cfg.data)
    if not data.is_file():
        raise InputNotFoundError(
            f"--data {data}: no such file{where_relative(cfg.data)}; create it with `facemask data prepare`"
        )
    storage, path = study_path(cfg)
    if cfg.resume and not rt.Tuner.can_restore(path):
        raise ConfigError(f"--resume: no study to restore at {path}; check --storage and --name")
    concurrency = max_concurrency(cfg, ray.cluster_resources(), node_resources(ray.nodes()))
    store = cfg.tracking_uri
    check_tracking_reachable(store, ray.nodes(), ray.util.get_node_ip_address())
    fingerprint = data_fingerprint(data)
    started = time.perf_counter()
    opened: list[str] = []  # the parent run's id, once there is one
    resume = (
        f"study {path} stopped; its state is saved and its MLflow runs are marked KILLED: run the same command "
        "with --resume to continue"
    )

    def close_runs(status: str) -> str:
        # Straight to the store, not through the study's own server: `ray job stop` signals that server too.
        # Interrupted trials' runs are reopened by --resume.
        if opened:
            end_open_runs(
                opened[0],
                status,
                uri=store,
                tags={"facemask.study_status": "interrupted" if status == "KILLED" else "failed"},
            )
        return resume

    forget = at_forced_stop(lambda: f"facemask tune: {close_runs('KILLED')}")
    try:
        with study_tracking_uri(store) as uri:
            return _run_study(
                cfg,
                uri,
                space,
                baseline,
                data,
                path,
                storage,
                concurrency,
                fingerprint,
                started,
                trial_callbacks,
                opened,
                resume,
            )
    except BaseException as exc:
        try:
            close_runs("KILLED" if isinstance(exc, (KeyboardInterrupt, StudyInterrupted)) else "FAILED")
        except Exception as close_error:  # the original error matters more than this one
            log.warning("could not close the study's MLflow runs in %s: %s", store, close_error)
        raise
    finally:
        forget()


def _run_study(
    cfg: StudyConfig,
    uri: str,
    space: dict,
    baseline: list,
    data: Path,
    path: str,
    storage: str,
    concurrency: int,
    fingerprint: str,
    started: float,
    trial_callbacks: dict | None,
    opened: list[str],
    resume: str,
) -> StudyResult:
    """The study itself, logging through `uri`; appends the parent run's id to `opened` as soon as it exists."""
    from ray import tune as rt

    previous = find_tagged_run(cfg.experiment, "facemask.study_path", path, uri=uri) if cfg.resume else None
    parent = RunLogger(
        cfg.experiment,
        cfg.name,
        {"facemask.study_path": path, "data.fingerprint": fingerprint},
        uri=uri,
        run_id=previous,
        reopen=previous is not None,
    )
    if parent.run_id:
        opened.append(parent.run_id)
    if previous is None:
        log_study(parent, cfg, fingerprint, space, baseline, concurrency, data)
    # Each trial's Ultralytics folder (plots, results.csv, weights) lives beside the study,
    # not in the trial's working directory, which is a temporary one under `ray job submit`.
    workdir = f"{path}-yolo" if "://" not in path else str(results_base() / "runs" / "tune-trials" / cfg.name)
    base = {
        "study": cfg,
        "workdir": workdir,
        "data": str(data),
        "tracking_uri": uri,
        "parent_run_id": parent.run_id,
        "trial_callbacks": trial_callbacks or {},
    }
    # A distributed trial's function only drives its Ray Train run: the workers hold the
    # resources (Tune needs some request, so a token one, which trial_workers leaves out).
    resources = (
        {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial, **cfg.trial_resources}
        if cfg.ray_workers_per_trial == 1
        else {"cpu": TRIAL_DRIVER_CPUS}
    )
    trainable = rt.with_resources(rt.with_parameters(run_trial, base=base), resources)
    try:
        tuner = (
            rt.Tuner.restore(path, trainable, resume_errored=True)
            if cfg.resume
            else new_tuner(cfg, trainable, space, baseline, storage, concurrency)
        )
        grid = tuner.fit()
    except BaseException:
        parent.stop_monitor()  # tune() closes the runs once the study's server is gone
        raise
    if interrupted(grid, cfg, time.perf_counter() - started):
        parent.stop_monitor()
        raise StudyInterrupted(resume)
    result = summarise(cfg, grid, parent, uri, started, path)
    try:
        if cfg.register:
            finalise(cfg, grid, result, parent, uri, data)
    finally:
        result.seconds = time.perf_counter() - started
        parent.log_metrics({"study/seconds": result.seconds})
        parent.end("FINISHED")
    return result


def log_study(
    parent: RunLogger, cfg: StudyConfig, fingerprint: str, space: dict, baseline: list, concurrency: int, data: Path
) -> None:
    """A new study's parent run: its settings, scheduler and searcher, search space and dataset."""
    scheduler = {"type": "ASHA", "time_attr": "epoch", "max_t": cfg.epochs, "grace_period": cfg.grace_period}
    searcher = {"type": "Optuna TPE", "seed": cfg.seed, "points_to_evaluate": len(baseline)}
    parent.log_params(
        {
            # The store is where these params go, and its URI may carry credentials: not a param.
            "study": {k: str(v) for k, v in asdict(cfg).items() if k != "tracking_uri"},
            "data_fingerprint": fingerprint,
            "scheduler": scheduler | {"reduction_factor": cfg.reduction_factor},
            "searcher": searcher,
            "max_concurrent": concurrency,
        }
    )
    parent.log_dict({"space": space, "baseline": baseline}, "search_space.yaml")
    # Logged once here so concurrent trials find the dataset instead of racing to create it.
    parent.log_dataset(data.parent.name, str(data), fingerprint)


def new_tuner(cfg: StudyConfig, trainable, space: dict, baseline: list, storage: str, concurrency: int):
    """A Tuner for a new study: Optuna's TPE (the baseline points first) under ASHA, unless asha is off."""
    import optuna
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(points_to_evaluate=baseline or None, sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    # stop_last_trials=False: a trial that reaches max_t ends by itself, so it still
    # validates best.pt and closes its run, instead of being cut off at its last report.
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            max_t=cfg.epochs,
            grace_period=cfg.grace_period,
            reduction_factor=cfg.reduction_factor,
            stop_last_trials=False,
        )
        if cfg.asha
        else None
    )
    return rt.Tuner(
        trainable,
        param_space=to_tune_space(space),
        tune_config=rt.TuneConfig(
            metric=cfg.metric,
            mode=cfg.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=cfg.trials,
            max_concurrent_trials=concurrency,
            time_budget_s=cfg.time_budget_s,
        ),
        run_config=rt.RunConfig(
            name=cfg.name,
            storage_path=storage,
            verbose=1,
            failure_config=rt.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=rt.CheckpointConfig(num_to_keep=1),
        ),
    )


def summarise(cfg: StudyConfig, grid, parent: RunLogger, uri: str, started: float, path: str) -> StudyResult:
    """Per-trial rows, final child-run statuses, plots and the best trial on the parent run."""
    rows = []
    for r in grid:
        history = r.metrics_dataframe
        values = history[cfg.metric].tolist() if history is not None and cfg.metric in history else []
        best_value = (max(values) if cfg.mode == "max" else min(values)) if values else float("nan")
        rows.append(
            {
                "trial_id": (r.metrics or {}).get("trial_id", ""),
                "status": trial_status(r, cfg.epochs),
                "epochs": int((r.metrics or {}).get("epoch", 0)),
                "objective": best_value,
                "config": r.config,
            }
        )
    reconcile_trials(uri, parent.run_id, rows, grid)
    counts = {s: sum(1 for row in rows if row["status"] == s) for s in ("finished", "stopped_early", "failed")}
    best = grid.get_best_result(cfg.metric, cfg.mode, scope="all")
    best_row = next(row for row in rows if row["config"] == best.config)
    best_val = {k: float(v) for k, v in best.metrics.items() if k in ("mAP50-95", "mAP50", "precision", "recall")}
    with tempfile.TemporaryDirectory() as tmp:
        for plot in study_plots(rows, cfg.metric, Path(tmp)):
            parent.log_artifact(plot, "plots")
    parent.log_dict(rows, "trials.json")
    parent.log_params({f"best.{k}": v for k, v in best.config.items()} | {"best.trial_id": best_row["trial_id"]})
    parent.log_metrics(
        {f"best/{k}": v for k, v in best_val.items()}
        | {f"trials/{k}": v for k, v in counts.items()}
        | {"trials/epochs": sum(row["epochs"] for row in rows)}
    )
    return StudyResult(
        parent.run_id,
        dict(best.config),
        best_row["trial_id"],
        best_val,
        counts,
        sum(row["epochs"] for row in rows),
        time.perf_counter() - started,
        path,
        trials=rows,
    )


def on_trial_resources(cfg: StudyConfig, fn: Callable, *args):
    """`fn(*args)` in a Ray task shaped as one of the study's training processes: a trial's CPUs,
    GPUs and custom resources, or one Ray Train worker's share of them. The final retrain and the
    test-split scoring need the GPU a trial had, while the study's driver may run on a head that
    has none (cluster.yaml's, the RayJob's). Refused in one line when no node can hold it."""
    import ray

    one = trial_workers(cfg.cpus_per_trial, cfg.gpus_per_trial, cfg.ray_workers_per_trial, ".")
    if cfg.ray_workers_per_trial == 1:
        one = replace(one, cpus_per_worker=cfg.cpus_per_trial, gpus_per_worker=cfg.gpus_per_trial)
    check_workers_fit(1, one.cpus_per_worker, one.gpus_per_worker, node_resources(ray.nodes()))
    options = {"num_cpus": one.cpus_per_worker, "num_gpus": one.gpus_per_worker, "max_retries": 0}
    if cfg.ray_workers_per_trial == 1 and cfg.trial_resources:
        options["resources"] = dict(cfg.trial_resources)
    return ray.get(ray.remote(fn).options(**options).remote(*args))


def final_training(cfg: TrainConfig) -> TrainResult:
    """The final retrain, inside `on_trial_resources`."""
    gpus = check_given_gpus("the study's final retrain")
    return train(replace(cfg, device="cpu") if gpus and gpu_as_cpu() else cfg)


def test_scores(model_uri: str, data: Path, imgsz: int, device: str, uri: str) -> dict[str, float]:
    """The registered model's scores on the test split, inside `on_trial_resources`."""
    gpus = check_given_gpus("the study's test-split scoring")
    device = "cpu" if gpus and gpu_as_cpu() else device
    return evaluate(model_uri, data, imgsz=imgsz, device=device, uri=uri).overall


def finalise(cfg: StudyConfig, grid, result: StudyResult, parent: RunLogger, uri: str, data: Path) -> None:
    """Retrain (optional), register, evaluate on the clean test split, and gate the promotion."""
    if cfg.final_epochs:
        overrides = dict(result.best_config)
        threshold = overrides.pop("repeat_threshold", None)
        train_data = data
        if threshold:
            train_data, _ = data_with_repeats(
                data, float(threshold), cfg.seed, Path(tempfile.mkdtemp(prefix="facemask-final-data-")), CLASS_NAMES
            )
        final_cfg = cfg.train_config(
            data=train_data,
            epochs=cfg.final_epochs,
            run_name=f"{cfg.name}-final",
            tracking_uri=uri,
            parent_run_id=parent.run_id,
            overrides=overrides,
            register=True,
            registered_model=cfg.registered_model,
        )
        if cfg.ray_workers_per_trial > 1:  # the final retrain is trained the way the trials were
            workdir = Path(tempfile.mkdtemp(prefix="facemask-final-"))
            final = train_distributed(
                replace(final_cfg, device="auto", project=workdir),
                trial_workers(cfg.cpus_per_trial, cfg.gpus_per_trial, cfg.ray_workers_per_trial, workdir),
            )
        else:
            # Its folder as the driver resolves it: the task's own working directory is Ray's.
            final = on_trial_resources(cfg, final_training, replace(final_cfg, project=resolve_path(final_cfg.project)))
        result.version = final.version
    else:
        best = grid.get_best_result(cfg.metric, cfg.mode, scope="all")
        run_id = next(row.get("run_id") for row in result.trials if row["trial_id"] == result.best_trial)
        checkpoint = best.checkpoint
        from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

        if checkpoint is None and best.metrics.get(CHECKPOINT_PATH_KEY):
            # A distributed trial reports its Ray Train run's checkpoint by path.
            from ray.train import Checkpoint

            checkpoint = Checkpoint(best.metrics[CHECKPOINT_PATH_KEY])
        with checkpoint.as_directory() as folder:
            weights = Path(tempfile.mkdtemp(prefix="facemask-best-")) / "best.pt"
            shutil.copyfile(Path(folder) / "best.pt", weights)
        tags = {f"val_{k}": round(v, 5) for k, v in result.best_val.items()} | {
            "data.fingerprint": data_fingerprint(data)
        }
        result.version = log_and_register(run_id, weights, tags, uri=uri, name=cfg.registered_model)
    model_uri = f"models:/{cfg.registered_model}/{result.version}"
    result.test = on_trial_resources(cfg, test_scores, model_uri, data, cfg.imgsz, cfg.device, uri)
    parent.log_metrics({f"test/{k}": v for k, v in result.test.items()})
    parent.set_tags({"facemask.registered_version": result.version})
    if cfg.promote:
        decision = promote(model_uri, uri)
        result.promoted, result.promote_reason = decision.promoted, decision.reason
