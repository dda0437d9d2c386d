"""`train_distributed(cfg, ray_cfg)`: one YOLO26 model trained data-parallel by Ray Train workers.

Ultralytics trains on one machine only: its DDP launcher spawns `torch.distributed.run`
on a temporary script and assumes CUDA. Here Ray Train starts one worker per process of
the job, on any node, and sets up the process group (NCCL on GPUs, gloo on CPUs); each
worker runs the same `train()` as a single-process training, with `RayDDPTrainer`, a
small subclass of Ultralytics' detection trainer that joins Ray's process group instead
of making its own. Each rank trains on its shard of every epoch (Ultralytics' distributed
sampler) and DDP all-reduces the gradients. Rank 0 alone logs to MLflow, saves weights
and registers; every epoch, every rank reports through `ray.train.report` and rank 0
attaches last.pt and best.pt as the checkpoint; Ray Train's controller logs that epoch's
metrics to the run once every rank has reported. When a worker dies, Ray Train restarts
the group from the newest checkpoint (FailureConfig) and rank 0 reopens the same MLflow
run, so each epoch is logged once.

`ranks.jsonl` in the run's folder (beside the checkpoints, or under --project for remote
storage) records, per epoch and rank, the images that
rank trained on and a hash of its weights (identical on every rank after each epoch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from facemask.core.errors import ConfigError
from facemask.core.lifecycle import quick_exit_while_this_thread_runs
from facemask.core.runtime import check_given_gpus, resolve_path
from facemask.core.settings import DistributedConfig, TrainConfig
from facemask.tracking import RunLogger, check_tracking_reachable, set_process_store
from facemask.training.train import TrainResult, epoch_metrics, train, tune_metric_names

log = logging.getLogger("facemask.training.distributed")
STATE_FILE = "facemask.json"  # in every checkpoint: the MLflow run and the epoch it holds
RANKS_FILE = "ranks.jsonl"
RESULT_FILE = "result.json"  # in the final checkpoint: what train() returned on rank 0
EPOCH_GROUPS = ("train", "val", "lr")  # the per-epoch metrics rank 0 reports (see train.epoch_metrics)


def weights_sha256(model) -> str:
    """A hash of a model's trained parameters (unwrapped from DDP): the same on every rank.

    Buffers are left out: DDP here does not sync BatchNorm's running statistics (Ultralytics
    turns buffer broadcasting off), so each rank keeps its own shard's; the saved model is
    rank 0's EMA, whose buffers Ultralytics broadcasts before each validation.
    """
    module = getattr(model, "module", model)
    digest = hashlib.sha256()
    for name, tensor in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _checkpoint_dir(last: Path, best: Path, files: dict[str, dict]) -> Path:
    """A temporary folder with last.pt, best.pt (those that exist) and `files` as JSON."""
    folder = Path(tempfile.mkdtemp(prefix="facemask-ckpt-"))
    for weights in (Path(last), Path(best)):
        if weights.is_file():
            shutil.copy2(weights, folder / weights.name)
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=1))
    return folder


def worker_loop(config: dict) -> None:
    """One Ray Train worker: the usual `train()`, with this rank's share of the data."""
    import ray.train

    quick_exit_while_this_thread_runs()
    cfg: TrainConfig = config["cfg"]
    # Workers start with their node's environment, not the driver's: log where the driver does.
    set_process_store(cfg.tracking_uri)
    rank = ray.train.get_context().get_world_rank()
    check_given_gpus(f"Ray Train rank {rank}")
    local = Path(tempfile.mkdtemp(prefix="facemask-resume-"))
    try:
        _train_rank(config, rank_config(cfg, rank, local), rank)
    finally:  # a rank that raises (Ray then restarts the group) leaves no resume folder behind
        shutil.rmtree(local, ignore_errors=True)


def _train_rank(config: dict, cfg: TrainConfig, rank: int) -> None:
    """The rank's training, with its per-epoch report to Ray Train (and Tune)."""
    import ray.train

    run: dict[str, Any] = {"id": cfg.run_id}
    epoch_started = time.perf_counter()
    reported: set[int] = set()

    def report(trainer) -> None:
        # Once per trained epoch on every rank: reports are a barrier, so all ranks must agree.
        nonlocal epoch_started
        if trainer.epoch + 1 in reported:
            return
        reported.add(trainer.epoch + 1)
        metrics = {
            "epoch": trainer.epoch + 1,
            "rank": rank,
            "pid": os.getpid(),
            "images": trainer.images_seen,
            "seconds": time.perf_counter() - epoch_started,
            "weights_sha256": weights_sha256(trainer.model),
        }
        trainer.images_seen = 0
        epoch_started = time.perf_counter()
        if rank != 0:
            ray.train.report(metrics)
            return
        epoch = epoch_metrics(trainer)
        metrics.update(epoch)
        if config.get("tune"):
            metrics.update(tune_metric_names(epoch))
        metrics["run_id"] = run["id"] or ""
        state = {"run_id": run["id"], "epoch": trainer.epoch + 1}
        folder = _checkpoint_dir(trainer.last, trainer.best, {STATE_FILE: state})
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def on_run(run_id: str | None) -> None:
        run["id"] = run_id

    callbacks: dict[str, list] = {event: list(fns) for event, fns in (config.get("callbacks") or {}).items()}
    callbacks.setdefault("on_fit_epoch_end", []).append(report)
    from facemask.compat.ultralytics import ddp_trainer_class

    result = train(cfg, callbacks=callbacks, on_run=on_run, trainer=ddp_trainer_class(), epoch_logging=False)
    if config.get("tune"):
        return  # Tune has every epoch; an extra report would count as one more
    report_outcome(result, rank)


def rank_config(cfg: TrainConfig, rank: int, local: Path) -> TrainConfig:
    """This rank's training: resumed from the group's checkpoint (into `local`) after a restart,
    logged by rank 0 only, on the device Ray Train gave this worker."""
    import ray.train
    import ray.train.torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = json.loads((Path(folder) / STATE_FILE).read_text())
            shutil.copy2(Path(folder) / "last.pt", local / "last.pt")
        # Ray restarted the group after a failure: every rank goes on from the same epoch.
        cfg = replace(cfg, resume_from=local / "last.pt", run_id=state["run_id"])
        log.warning("rank %d resumes from epoch %d of run %s", rank, state["epoch"], state["run_id"])
    if rank != 0:
        # Only logging differs: Ultralytics' collectives depend on its args (plots adds a
        # confusion-matrix reduce), so every rank must run with the same ones.
        cfg = replace(cfg, tracking=False, register=False)
    device = ray.train.torch.get_device()
    return replace(cfg, device="cpu" if device.type == "cpu" else str(device.index or 0))


def report_outcome(result, rank: int) -> None:
    """One last report from every rank (reports are a barrier): rank 0's carries the outcome,
    with best.pt, to the driver through storage, wherever rank 0 ran."""
    import ray.train

    final = {"epoch": result.epochs_run, "rank": rank, "final": True}
    if rank != 0:
        ray.train.report(final)
        return
    summary = {
        "run_id": result.run_id,
        "version": result.version,
        "metrics": result.metrics,
        "epochs_run": result.epochs_run,
        "save_dir": str(result.save_dir),
        "fingerprint": result.fingerprint,
        "logging_failures": result.logging_failures,
    }
    folder = _checkpoint_dir(
        result.last,
        result.best,
        {RESULT_FILE: summary, STATE_FILE: {"run_id": result.run_id, "epoch": result.epochs_run, "final": True}},
    )
    try:
        ray.train.report({**final, **result.metrics}, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def epoch_callback(path: Path, tracking_uri: str, tracking: bool):
    """A Ray Train controller callback, run once all ranks have reported an epoch (and its
    checkpoint is saved): it logs rank 0's metrics for that epoch to MLflow and appends
    every rank's figures to `path` (ranks.jsonl).

    Logging here rather than in rank 0 means an epoch that a failure rolls back is never
    logged: the restarted group trains it again and it is logged once, when it completes.
    """
    from ray.train import UserCallback

    class EpochLog(UserCallback):
        def __init__(self) -> None:
            self.loggers: dict[str, RunLogger] = {}

        def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
            ranks = [{k: m.get(k) for k in ("rank", "pid", "images", "seconds", "weights_sha256")} for m in metrics]
            first = metrics[0] if metrics else {}
            with path.open("a") as f:
                f.write(
                    json.dumps(
                        {
                            "epoch": first.get("epoch"),
                            "final": bool(first.get("final")),
                            "ranks": ranks,
                            "checkpoint": checkpoint.path if checkpoint is not None else None,
                        }
                    )
                    + "\n"
                )
            run_id = first.get("run_id")
            if tracking and run_id and not first.get("final"):
                if run_id not in self.loggers:
                    self.loggers[run_id] = RunLogger(run_id=run_id, tracking_uri=tracking_uri, system_metrics=False)
                self.loggers[run_id].log_metrics(
                    {k: v for k, v in first.items() if k.split("/")[0] in EPOCH_GROUPS}, step=first["epoch"]
                )

    return EpochLog()


# How many times Ray Train may start again a worker group that did not come up in its start-up
# timeout (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s) before the run fails: three attempts
# in all. Its default is without end: a group that cannot be placed waited for ever, silently.
WORKER_GROUP_START_RETRIES = 2


def node_resources(nodes: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The resources of each alive node, from `ray.nodes()`."""
    return [dict(n.get("Resources") or {}) for n in nodes if n.get("Alive")]


def check_workers_fit(
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    nodes: list[dict[str, float]],
    driver_cpus: float = 0.0,
    flags: str = "--ray-workers N --cpus-per-worker C",
) -> None:
    """Refuse, in one line, a worker group that no placement could hold: a worker bigger than
    every node, or workers (plus a driver's `driver_cpus`) beyond the cluster's CPUs or GPUs.
    Ray would otherwise wait for the resources without end."""
    asked = f"{workers} workers x {cpus_per_worker:g} CPU" + (f" + {gpus_per_worker:g} GPU" if gpus_per_worker else "")
    if driver_cpus:
        asked += f", plus {driver_cpus:g} CPU for the trial's driver"
    biggest_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    biggest_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    total_cpu, total_gpu = sum(n.get("CPU", 0) for n in nodes), sum(n.get("GPU", 0) for n in nodes)
    have = (
        f"the cluster has {total_cpu:g} CPUs and {total_gpu:g} GPUs on {len(nodes)} nodes "
        f"(the largest: {biggest_cpu:g} CPUs)"
    )
    if cpus_per_worker > biggest_cpu + 1e-9 or gpus_per_worker > biggest_gpu + 1e-9:
        raise ConfigError(f"{asked}: no node can hold one worker; {have}; lower {flags}")
    if workers * cpus_per_worker + driver_cpus > total_cpu + 1e-9 or workers * gpus_per_worker > total_gpu + 1e-9:
        raise ConfigError(f"{asked}: more than the cluster holds; {have}; lower {flags}")


def check_distributed(cfg: TrainConfig, ray_cfg: DistributedConfig) -> None:
    """Refuse settings that cannot work, in one line each, before any worker starts."""
    if ray_cfg.workers < 1:
        raise ConfigError("--ray-workers must be at least 1")
    if ray_cfg.gpus_per_worker not in (0, 1):
        raise ConfigError("--gpus-per-worker: 0 or 1 (one process drives one GPU; use more workers for more GPUs)")
    if cfg.batch < ray_cfg.workers:
        raise ConfigError(
            f"--batch {cfg.batch} is the global batch, split across {ray_cfg.workers} workers: "
            f"use at least {ray_cfg.workers}"
        )
    if cfg.device not in ("auto", "cpu") and ray_cfg.workers > 1:
        raise ConfigError("--device picks devices for one process; with --ray-workers, use --gpus-per-worker")


def train_distributed(
    cfg: TrainConfig,
    ray_cfg: DistributedConfig,
    report_to_tune: bool = False,
    callbacks: dict[str, list[Callable]] | None = None,
) -> TrainResult | None:
    """Train one model with `ray_cfg.workers` Ray Train workers; the same result as `train()`.

    report_to_tune: inside a Tune trial, rank 0's epochs go to Tune as the trial's results
    (ASHA stops the trial between epochs) and this returns None.

    callbacks: Ultralytics events to extra functions, run on every rank (as `train()`'s
    callbacks); they travel to the workers by value, so they must pickle. A function reads
    the rank from `ray.train.get_context()`.

    Needs a connected Ray cluster (the CLI and jobs/train.py join or start one). The
    storage folder (`ray_cfg.storage`, default `ray-train/` under the project) holds the
    checkpoints, `ranks.jsonl` and `result.json`; on several nodes it must be shared
    (NFS, or an s3:// URI for the checkpoints).
    """
    import ray

    check_distributed(cfg, ray_cfg)
    if not report_to_tune:  # a Tune trial was checked against the cluster before the study started
        check_workers_fit(
            ray_cfg.workers,
            ray_cfg.cpus_per_worker,
            ray_cfg.gpus_per_worker,
            node_resources(ray.nodes()),
            flags="--ray-workers or --cpus-per-worker/--gpus-per-worker",
        )
    if cfg.tracking:
        check_tracking_reachable(cfg.tracking_uri, ray.nodes(), ray.util.get_node_ip_address(), who="rank 0")
    started = time.perf_counter()
    data = resolve_path(cfg.data)
    project = resolve_path(cfg.project)
    name = cfg.run_name or time.strftime("ddp-%Y%m%d-%H%M%S")
    storage = ray_cfg.storage or str(project / "ray-train")
    # ranks.jsonl is written by the controller, which runs beside this driver.
    run_dir = Path(storage) / name if "://" not in storage else project / name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = replace(cfg, data=data, project=project, run_name=name)
    result = ray_trainer(cfg, ray_cfg, storage, run_dir, report_to_tune, callbacks).fit()
    return None if report_to_tune else collect_result(result, run_dir, started)


def ray_trainer(
    cfg: TrainConfig,
    ray_cfg: DistributedConfig,
    storage: str,
    run_dir: Path,
    report_to_tune: bool,
    callbacks: dict[str, list[Callable]] | None,
):
    """The TorchTrainer that runs `worker_loop` on `ray_cfg.workers` ranks, checkpointing to `storage`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    extra_callbacks = []
    if report_to_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        extra_callbacks = [TuneReportCallback()]
    resources = {
        "CPU": ray_cfg.cpus_per_worker,
        **({"GPU": ray_cfg.gpus_per_worker} if ray_cfg.gpus_per_worker else {}),
    }
    return TorchTrainer(
        worker_loop,
        train_loop_config={"cfg": cfg, "tune": report_to_tune, "callbacks": callbacks or {}},
        scaling_config=ScalingConfig(
            num_workers=ray_cfg.workers, use_gpu=bool(ray_cfg.gpus_per_worker), resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=storage,
            failure_config=FailureConfig(
                max_failures=ray_cfg.max_failures, controller_failure_limit=WORKER_GROUP_START_RETRIES
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[epoch_callback(run_dir / RANKS_FILE, cfg.tracking_uri, cfg.tracking), *extra_callbacks],
        ),
    )


def collect_result(result, run_dir: Path, started: float) -> TrainResult:
    """The TrainResult that rank 0's final checkpoint holds, its weights copied out of Ray's storage."""
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint; see {run_dir}")
    with result.checkpoint.as_directory() as folder:
        summary = json.loads((Path(folder) / RESULT_FILE).read_text())
        kept = run_dir / "weights"
        kept.mkdir(exist_ok=True)
        for weights in ("best.pt", "last.pt"):
            if (Path(folder) / weights).is_file():
                shutil.copy2(Path(folder) / weights, kept / weights)
    return TrainResult(
        run_id=summary["run_id"],
        save_dir=Path(summary["save_dir"]),
        best=kept / "best.pt",
        last=kept / "last.pt",
        metrics=summary["metrics"],
        epochs_run=summary["epochs_run"],
        seconds=time.perf_counter() - started,
        fingerprint=summary["fingerprint"],
        version=summary["version"],
        logging_failures=summary["logging_failures"],
    )
