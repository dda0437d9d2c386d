"""`tune(cfg)`: a Ray Tune study of YOLO26 hyperparameters with Optuna (TPE) and ASHA.

One MLflow parent run per study, one nested child run per trial. Each trial reports
every epoch through `ray.tune.report` with its weights as a checkpoint, so ASHA can stop
it and a crashed trial resumes from its last epoch. Library code here never calls
`ray.init()` or `ray.shutdown()`: the caller owns the cluster.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import ConfigError, InputNotFoundError, StudyInterrupted
from facemask.core.lifecycle import (
    at_forced_stop,
    ctrl_c_handler_kept,
    quick_exit_while_this_thread_runs,
    stop_signal,
)
from facemask.core.manifest import data_fingerprint, dataset_profile
from facemask.core.runtime import check_given_gpus, gpu_as_cpu, resolve_path, results_base, where_relative
from facemask.core.settings import StudyConfig
from facemask.data.sampling import data_with_repeats
from facemask.tracking import (
    RunLogger,
    check_tracking_reachable,
    client,
    end_open_runs,
    find_tagged_run,
    set_process_store,
    study_tracking_uri,
)
from facemask.training.cost import LATENCY, check_target, cost_key, cost_table
from facemask.training.distributed import node_resources, train_distributed
from facemask.training.finish import StudyResult, finalise
from facemask.training.resources import TRIAL_DRIVER_CPUS, max_concurrency, trial_workers
from facemask.training.space import costs_to_measure, load_search_space, shape_of, to_tune_space
from facemask.training.summary import find_trial_run, summarise
from facemask.training.train import epoch_metrics, per_epoch, train, tune_metric_names

log = logging.getLogger("facemask.training.tune")


def run_trial(config: dict[str, Any], base: dict[str, Any]) -> None:
    """The Tune trainable: one YOLO training that reports each epoch with a checkpoint."""
    from ray import tune

    quick_exit_while_this_thread_runs()
    trial_id = tune.get_context().get_trial_id()
    gpus = check_given_gpus(f"trial {trial_id}")
    set_process_store(base["tracking_uri"])
    study: StudyConfig = base["study"]
    workdir = Path(base["workdir"]) / trial_id
    cfg = trial_config(dict(config), base, trial_id, gpus, workdir)
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
    run_id, resume_from = restored_trial(base, trial_id, workdir)
    holder: dict[str, Any] = {"run_id": run_id}
    # The trial's cost, measured before the study began (facemask.training.cost), goes with every report.
    cost = {LATENCY: base["costs"][cost_key(cfg.model, cfg.imgsz)]} if base.get("costs") else {}
    callbacks: dict[str, list[Callable]] = {"on_fit_epoch_end": [epoch_reporter(holder, cost)]}
    for event, fns in (base.get("trial_callbacks") or {}).items():
        callbacks.setdefault(event, []).extend(fns)
    train(
        replace(cfg, run_id=run_id, resume_from=resume_from),
        callbacks=callbacks,
        on_run=lambda rid: holder.update(run_id=holder["run_id"] or rid),
    )


def trial_config(config: dict[str, Any], base: dict[str, Any], trial_id: str, gpus: list[str], workdir: Path):
    """The TrainConfig of one trial: the study's settings with the sampled `config` applied."""
    import ray
    from ray import tune

    study: StudyConfig = base["study"]
    data = Path(base["data"])
    threshold = config.pop("repeat_threshold", None)
    if threshold:
        data, _ = data_with_repeats(data, float(threshold), study.seed, workdir / "data", CLASS_NAMES)
    resources = tune.get_context().get_trial_resources().required_resources
    shape = shape_of(config, study.model, study.imgsz)
    cfg = study.train_config(
        **shape,
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
            "facemask.resources": json.dumps(resources, sort_keys=True),
            "facemask.gpus": ",".join(gpus),
        },
        plots=False,
    )
    return replace(cfg, device="cpu") if gpus and gpu_as_cpu() else cfg


def restored_trial(base: dict[str, Any], trial_id: str, workdir: Path) -> tuple[str | None, Path | None]:
    """The MLflow run a retried trial continues, and the weights it resumes from (its Tune checkpoint's)."""
    from ray import tune

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
    return run_id, resume_from


def epoch_reporter(holder: dict[str, Any], cost: dict[str, float] | None = None) -> Callable:
    """An epoch-end callback that reports the epoch's metrics (and the trial's `cost`) to Tune with a
    checkpoint of the weights and the trial's MLflow run (`holder["run_id"]`, known once the run exists)."""
    from ray import tune

    @per_epoch
    def report(trainer) -> None:
        metrics = epoch_metrics(trainer)
        payload = {"epoch": trainer.epoch + 1, **tune_metric_names(metrics), **(cost or {})}
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("last", "best"):
                source = Path(getattr(trainer, name))
                if source.is_file():
                    shutil.copyfile(source, Path(tmp) / f"{name}.pt")
            (Path(tmp) / "trial.json").write_text(json.dumps({"run_id": holder["run_id"], "epoch": trainer.epoch + 1}))
            tune.report(payload, checkpoint=tune.Checkpoint.from_directory(tmp))

    return report


def interrupted(grid, cfg: StudyConfig, elapsed: float, signalled: bool = False) -> bool:
    """Tune returns normally after a stop (SIGINT, or SIGTERM handed to Tune's handler); tell that
    apart from a study that ran its course. `signalled`: this process took a stop signal meanwhile.

    Tune ends the trials that run when it stops as terminated, like those that finished: a stop
    that came as the last trial started left it terminated with no epoch, and the study was
    registered as done. A trial terminated before the epochs ASHA could stop it at was stopped."""
    if signalled:
        return True
    budget_spent = cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s
    if budget_spent:
        return False
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    cut_short = any(
        result.error is None and (result.metrics or {}).get("epoch", 0) < min(cfg.grace_period, cfg.epochs)
        for result in grid
    )
    return unfinished > 0 or cut_short or len(grid) < cfg.trials


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
    run_id = find_tagged_run(cfg.experiment, "facemask.study_path", path, tracking_uri=cfg.tracking_uri)
    if run_id and client(cfg.tracking_uri).get_run(run_id).info.status == "FINISHED":
        return "finished", path, run_id
    return "interrupted", path, run_id


@dataclass
class Study:
    """One study as it runs: its config, search space, data, where Tune keeps it, how many trials
    run at once, and its MLflow parent run once that is open."""

    cfg: StudyConfig
    space: dict
    baseline: list
    data: Path
    storage: str
    path: str
    concurrency: int
    fingerprint: str
    trial_callbacks: dict = field(default_factory=dict)
    # With a latency target: each (model, size)'s measured Latency, by cost_key.
    costs: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    parent_run_id: str | None = None

    @property
    def how_to_go_on(self) -> str:
        return (
            f"study {self.path} stopped; its state is saved and its MLflow runs are marked KILLED: run the same "
            "command with --resume to continue"
        )


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
    tracking_uri = cfg.tracking_uri
    check_tracking_reachable(tracking_uri, ray.nodes(), ray.util.get_node_ip_address())
    study = Study(cfg, space, baseline, data, storage, path, concurrency, data_fingerprint(data), trial_callbacks or {})
    study.costs = study_costs(cfg, space, baseline)

    def close_runs(status: str) -> str:
        # Straight to the store, not through the study's own server: `ray job stop` signals that server too.
        # Interrupted trials' runs are reopened by --resume.
        if study.parent_run_id:
            end_open_runs(
                study.parent_run_id,
                status,
                tracking_uri=tracking_uri,
                tags={"facemask.study_status": "interrupted" if status == "KILLED" else "failed"},
            )
        return study.how_to_go_on

    forget = at_forced_stop(lambda: f"facemask tune: {close_runs('KILLED')}")
    try:
        # The trials log through a server of the study's own in front of the store (study_tracking_uri).
        with study_tracking_uri(tracking_uri) as through:
            return _run_study(study, through)
    except BaseException as exc:
        try:
            close_runs("KILLED" if isinstance(exc, (KeyboardInterrupt, StudyInterrupted)) else "FAILED")
        except Exception as close_error:  # the original error matters more than this one
            log.warning("could not close the study's MLflow runs in %s: %s", tracking_uri, close_error)
        raise
    finally:
        forget()


def study_costs(cfg: StudyConfig, space: dict, baseline: list) -> dict:
    """With a latency target, every (model, size) the space can train, measured now, before any
    trial takes the cores (facemask.training.cost); else nothing."""
    if not cfg.latency_target:
        if cfg.max_latency_ms is not None:
            raise ConfigError("--max-latency-ms needs --latency-target: the target its budget is measured on")
        return {}
    check_target(cfg.latency_target)
    if cfg.ray_workers_per_trial > 1:
        raise ConfigError(
            "--latency-target: a study with --ray-workers-per-trial > 1 reports through Ray Train, "
            "which does not carry the cost; use one worker per trial"
        )
    pairs = costs_to_measure(space, baseline, cfg.model, cfg.imgsz)
    costs = cost_table(pairs, cfg.latency_target)
    took = sum(c.measure_s for c in costs.values())
    log.warning("measured %d (model, size) on %s in %.1fs before the first trial", len(costs), cfg.latency_target, took)
    return costs


def _run_study(study: Study, tracking_uri: str) -> StudyResult:
    """The study itself, logging through `tracking_uri`; sets `study.parent_run_id` as soon as the run exists."""
    from ray import tune as rt

    cfg, path, data, started = study.cfg, study.path, study.data, study.started
    fingerprint, space, baseline = study.fingerprint, study.space, study.baseline
    previous = (
        find_tagged_run(cfg.experiment, "facemask.study_path", path, tracking_uri=tracking_uri) if cfg.resume else None
    )
    parent = RunLogger(
        cfg.experiment,
        cfg.name,
        {"facemask.study_path": path, "data.fingerprint": fingerprint},
        tracking_uri=tracking_uri,
        run_id=previous,
        reopen=previous is not None,
    )
    study.parent_run_id = parent.run_id
    if previous is None:
        log_study(parent, cfg, fingerprint, space, baseline, study.concurrency, data)
        if study.costs:
            parent.log_dict({key: c.as_dict() for key, c in study.costs.items()}, "latency.json")
    trainable = study_trainable(study, parent.run_id, tracking_uri)
    try:
        tuner = (
            rt.Tuner.restore(path, trainable, resume_errored=True)
            if cfg.resume
            else new_tuner(cfg, trainable, space, baseline, study.storage, study.concurrency)
        )
        signalled_before = stop_signal() is not None
        with ctrl_c_handler_kept():
            grid = tuner.fit()
    except BaseException:
        parent.stop_monitor()  # tune() closes the runs once the study's server is gone
        raise
    signalled = not signalled_before and stop_signal() is not None  # SIGTERM, which ours hands to Tune's
    if interrupted(grid, cfg, time.perf_counter() - started, signalled):
        parent.stop_monitor()
        raise StudyInterrupted(study.how_to_go_on)
    result = summarise(cfg, grid, parent, tracking_uri, started, path, space)
    try:
        if cfg.register:
            finalise(cfg, grid, result, parent, tracking_uri, data)
    finally:
        result.seconds = time.perf_counter() - started
        parent.log_metrics({"study/seconds": result.seconds})
        parent.end("FINISHED")
    return result


def study_trainable(study: Study, parent_run_id: str, tracking_uri: str):
    """`run_trial` with what every trial shares bound to it, and the resources one trial asks for."""
    from ray import tune as rt

    cfg, path, data = study.cfg, study.path, study.data
    # Each trial's Ultralytics folder (plots, results.csv, weights) lives beside the study,
    # not in the trial's working directory, which is a temporary one under `ray job submit`.
    workdir = f"{path}-yolo" if "://" not in path else str(results_base() / "runs" / "tune-trials" / cfg.name)
    base = {
        "study": cfg,
        "workdir": workdir,
        "data": str(data),
        "tracking_uri": tracking_uri,
        "parent_run_id": parent_run_id,
        "trial_callbacks": study.trial_callbacks,
        "costs": {key: c.median_ms for key, c in study.costs.items()},
    }
    # A distributed trial's function only drives its Ray Train run: the workers hold the
    # resources (Tune needs some request, so a token one, which trial_workers leaves out).
    resources = (
        {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial, **cfg.trial_resources}
        if cfg.ray_workers_per_trial == 1
        else {"cpu": TRIAL_DRIVER_CPUS}
    )
    return rt.with_resources(rt.with_parameters(run_trial, base=base), resources)


def log_study(
    parent: RunLogger, cfg: StudyConfig, fingerprint: str, space: dict, baseline: list, concurrency: int, data: Path
) -> None:
    """A new study's parent run: its settings, scheduler and searcher, search space and dataset."""
    scheduler = {"type": "ASHA", "time_attr": "epoch", "max_t": cfg.epochs, "grace_period": cfg.grace_period}
    if not uses_asha(cfg):
        scheduler = {"type": "none", "why": "asha off" if not cfg.asha else "more than one objective"}
    searcher = {"type": "Optuna TPE", "seed": cfg.seed, "points_to_evaluate": len(baseline)}
    searcher["objectives"] = {name: mode for name, mode in objectives(cfg)}
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
    parent.log_dataset(data.parent.name, str(data), fingerprint, profile=dataset_profile(data))


def objectives(cfg: StudyConfig) -> list[tuple[str, str]]:
    """(name, mode) of each objective: the score, then the latency when a target is set."""
    return [(cfg.metric, cfg.mode)] + ([(LATENCY, "min")] if cfg.latency_target else [])


def uses_asha(cfg: StudyConfig) -> bool:
    """ASHA ranks trials by one number: with a cost objective it would stop the small, fast
    trials that the front is made of, so such a study runs every trial to its end."""
    return cfg.asha and not cfg.latency_target


def new_tuner(cfg: StudyConfig, trainable, space: dict, baseline: list, storage: str, concurrency: int):
    """A Tuner for a new study: Optuna's TPE (the baseline points first) under ASHA, unless asha is off."""
    import optuna
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    # TPE takes several objectives as it takes one (Optuna's multi-objective TPE); Tune then gets
    # no metric of its own, and the searcher reports every objective of each trial to Optuna.
    names, modes = zip(*objectives(cfg))
    several = len(names) > 1
    searcher = OptunaSearch(
        metric=list(names) if several else None,
        mode=list(modes) if several else None,
        points_to_evaluate=baseline or None,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
    )
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
        if uses_asha(cfg)
        else None
    )
    return rt.Tuner(
        trainable,
        param_space=to_tune_space(space),
        tune_config=rt.TuneConfig(
            metric=None if several else cfg.metric,
            mode=None if several else cfg.mode,
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
