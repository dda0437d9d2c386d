"""`train(cfg)`: one Ultralytics YOLO26 training, tracked in MLflow by our own callbacks.

Ultralytics' built-in integrations (mlflow, raytune, ...) are stripped from each trainer
rather than switched off in its settings file, so nothing is logged twice and a user's
global Ultralytics settings are never rewritten.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from facemask import __version__
from facemask.core.errors import ConfigError, InputNotFoundError, PretrainedUnavailableError
from facemask.core.manifest import data_fingerprint, dataset_profile
from facemask.core.runtime import cpus_given, git_commit, resolve_device, resolve_path, ultralytics_env, where_relative
from facemask.core.settings import TrainConfig
from facemask.quality.calibrate import calibrate_version
from facemask.tracking import RunLogger, log_and_register, metric_key

log = logging.getLogger("facemask.training.train")

INTEGRATION_MODULES = (
    "ultralytics.utils.callbacks.mlflow",
    "ultralytics.utils.callbacks.raytune",
    "ultralytics.utils.callbacks.comet",
    "ultralytics.utils.callbacks.clearml",
    "ultralytics.utils.callbacks.dvc",
    "ultralytics.utils.callbacks.tensorboard",
    "ultralytics.utils.callbacks.wb",
    "ultralytics.utils.callbacks.platform",
    "ultralytics.utils.events",
)
TRAIN_ARTIFACTS = ("results.csv", "args.yaml")
PLOT_PATTERNS = (
    "confusion_matrix*.png",
    "*PR_curve.png",
    "*F1_curve.png",
    "*P_curve.png",
    "*R_curve.png",
    "results.png",
)


@dataclass
class TrainResult:
    run_id: str | None
    save_dir: Path
    best: Path
    last: Path
    metrics: dict[str, float]
    epochs_run: int
    seconds: float
    fingerprint: str
    version: str | None = None
    logging_failures: int = 0


def resolve_model_source(model: str) -> str:
    """Check a --weights value before training so a bad one fails in one clear line."""
    path = Path(model).expanduser()
    if path.is_file():
        return str(path.resolve())
    if path.suffix in (".yaml", ".yml"):
        if path.parent != Path("."):
            raise InputNotFoundError(
                f"--weights {model}: no such file; pass a path to a .yaml, or a built-in name like yolo26n.yaml"
            )
        return model  # an Ultralytics built-in config such as yolo26n.yaml
    if path.suffix == ".pt":
        if path.parent != Path("."):
            raise InputNotFoundError(
                f"--weights {model}: no such file; pass a path to a .pt, or a yaml like yolo26n.yaml"
            )
        ultralytics_env()
        from ultralytics.utils import SETTINGS, is_online

        cached = Path(SETTINGS["weights_dir"]) / path.name
        if cached.is_file():
            return str(cached)
        if not is_online():
            raise PretrainedUnavailableError(
                f"{model} is not on this machine and there is no network: pass --weights {path.stem}.yaml "
                "to train from scratch, or a path to a .pt"
            )
        return model
    raise ConfigError(f"--weights {model}: expected a .pt weights file or a .yaml model config")


def strip_integrations(trainer) -> None:
    """Remove Ultralytics' own logging callbacks; ours run instead."""
    for event, functions in trainer.callbacks.items():
        trainer.callbacks[event] = [f for f in functions if getattr(f, "__module__", "") not in INTEGRATION_MODULES]


def size_threads(trainer) -> None:
    """Torch's threads, and a GPU's dataloader workers, sized to the CPUs this process was given
    (`runtime.cpus_given`). Ultralytics sets torch to cores - 1 threads when it sets up a CPU
    device, so CPU training used one of two cores; on a GPU it starts up to 8 workers whatever
    Ray granted. (On a CPU it loads data in the training process: its workers stay 0.)

    Run at `on_pretrain_routine_start`, after Ultralytics' own device set-up and before any
    step, and at `on_val_start`: the final evaluation sets its device up again."""
    import torch

    cpus = cpus_given()
    torch.set_num_threads(cpus)
    args = getattr(trainer, "args", None)
    device = getattr(trainer, "device", None)
    if args is not None and device is not None and device.type != "cpu" and getattr(args, "workers", 0):
        args.workers = min(int(args.workers), cpus)


def per_epoch(fn: Callable) -> Callable:
    """Wrap an `on_fit_epoch_end` callback so it sees training epochs only.

    Ultralytics fires that event once more after validating best.pt (at step epochs+1);
    the wrapped callback skips it. The last real epoch is the first one seen with
    `trainer.stop` set, so early stopping is handled too.
    """
    done = False

    def wrapper(trainer) -> None:
        nonlocal done
        if done:
            return
        done = bool(getattr(trainer, "stop", False))
        fn(trainer)

    wrapper.__name__ = getattr(fn, "__name__", "per_epoch")
    return wrapper


def epoch_metrics(trainer) -> dict[str, float]:
    """Train losses, val losses and metrics, and learning rates of the epoch just ended."""
    out: dict[str, float] = {}
    if getattr(trainer, "tloss", None) is not None:
        out.update(trainer.label_loss_items(trainer.tloss, prefix="train"))
    out.update(trainer.metrics or {})
    out.update(getattr(trainer, "lr", {}) or {})
    return {metric_key(k): float(v) for k, v in out.items()}


def tune_metric_names(metrics: dict[str, float]) -> dict[str, float]:
    """Epoch metrics under the names a Tune study ranks trials by: `val/mAP50-95` -> `mAP50-95`,
    `train/box_loss` -> `train_box_loss`."""
    return {k.replace("val/", "").replace("/", "_"): v for k, v in metrics.items()}


def _read_results_csv(path: Path) -> list[dict[str, float]]:
    import csv

    if not path.is_file():
        return []
    with path.open() as fh:
        return [
            {k.strip(): float(v) for k, v in row.items() if k and v not in (None, "")} for row in csv.DictReader(fh)
        ]


class TrainingLog:
    """What one training writes to its MLflow run: params once, each epoch's metrics, and at the
    end the Ultralytics outputs (results, plots, weights, the dataset's manifest)."""

    def __init__(self, logger: RunLogger, data: Path, fingerprint: str, commit: str | None, resumed_from) -> None:
        # resumed_from: None for a new run, else the checkpoint (or "scratch") a reopened run goes on from.
        self.logger, self.data, self.fingerprint, self.resumed_from = logger, data, fingerprint, resumed_from
        self.commit = commit
        self.params_logged = False
        self.epochs: set[int] = set()

    def log_params(self, args: dict[str, Any]) -> None:
        self.params_logged = True
        args = {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()}
        import torch

        identity = {"data_fingerprint": self.fingerprint, "facemask_version": __version__}
        # What the process trains with (`size_threads`), beside what was asked.
        identity["torch_threads"] = torch.get_num_threads()
        self.logger.log_params({**args, **identity, "git_commit": self.commit or "none"})
        profile = dataset_profile(self.data)
        self.logger.log_dataset(self.data.parent.name, str(self.data), self.fingerprint, profile=profile)

    def on_start(self, trainer) -> None:
        strip_integrations(trainer)
        if self.resumed_from is None:
            self.log_params(vars(trainer.args))
        else:
            # A resumed run has its params already; MLflow refuses to change them (model, resume).
            self.params_logged = True
            self.logger.set_tags({"facemask.resumed_from": str(self.resumed_from)})

    def on_epoch(self, trainer) -> None:
        self.epochs.add(trainer.epoch + 1)
        self.logger.log_metrics(epoch_metrics(trainer), step=trainer.epoch + 1)

    def outputs(self, trainer, save_dir: Path, epoch_logging: bool) -> None:
        """Everything a finished, failed or stopped training left in `save_dir`."""
        # Under multi-GPU DDP our callbacks run in another process; fill the epochs in from results.csv.
        if not self.params_logged and (save_dir / "args.yaml").is_file():
            self.log_params(yaml.safe_load((save_dir / "args.yaml").read_text()) or {})
        # Epochs up to a resume point were logged by the attempt that trained them.
        first_epoch = int(getattr(trainer, "start_epoch", 0) or 0) + 1 if trainer is not None else 1
        for row in _read_results_csv(save_dir / "results.csv") if epoch_logging else []:
            epoch = int(row.get("epoch", 0))
            if epoch >= first_epoch and epoch not in self.epochs:
                self.logger.log_metrics({metric_key(k): v for k, v in row.items() if k != "epoch"}, step=epoch)
        for artifact in TRAIN_ARTIFACTS:
            self.logger.log_artifact(save_dir / artifact)
        for pattern in PLOT_PATTERNS:
            for plot in sorted(save_dir.glob(pattern)):
                self.logger.log_artifact(plot, "plots")
        for weights in ("best.pt", "last.pt"):
            self.logger.log_artifact(save_dir / "weights" / weights, "weights")
        self.logger.log_artifact(self.data.parent / "manifest.json", "data")


def train_arguments(cfg: TrainConfig, data: Path, device: str, project: Path, name: str) -> dict[str, Any]:
    """Ultralytics' `train()` arguments of `cfg`: its own, or on resume only what a checkpoint does not hold."""
    if cfg.resume_from:
        # Ultralytics takes every other argument from the checkpoint when resuming.
        return {"resume": str(cfg.resume_from), "device": device, "workers": cfg.workers, "data": str(data)}
    sizes = {"epochs": cfg.epochs, "imgsz": cfg.imgsz, "batch": cfg.batch, "device": device, "workers": cfg.workers}
    where = {"project": str(project), "name": name, "exist_ok": True}
    return {
        "data": str(data),
        **sizes,
        **where,
        "seed": cfg.seed,
        "plots": cfg.plots,
        "verbose": False,
        **cfg.overrides,
    }


def train(
    cfg: TrainConfig,
    callbacks: dict[str, list[Callable]] | None = None,
    on_run: Callable[[str | None], None] | None = None,
    trainer: type | None = None,
    epoch_logging: bool = True,
) -> TrainResult:
    """Run one training; log params, per-epoch metrics, artifacts and the dataset to MLflow.

    `callbacks` maps Ultralytics events to extra functions (Tune uses this to report
    each epoch); `on_run` is told the MLflow run id before training starts; `trainer` is
    an Ultralytics trainer class to use instead of the default (`facemask.training.distributed`'s,
    for a Ray Train worker); epoch_logging=False leaves the per-epoch metrics to the caller
    (Ray Train's controller logs them once an epoch's checkpoint is safe, so a restart
    never logs an epoch twice). The MLflow run always ends FINISHED, FAILED or KILLED.
    """
    data = resolve_path(cfg.data)
    if not data.is_file():
        raise InputNotFoundError(
            f"--data {data}: no such file{where_relative(cfg.data)}; create it with `facemask data prepare`"
        )
    source = str(cfg.resume_from) if cfg.resume_from else resolve_model_source(cfg.model)
    ultralytics_env()
    from ultralytics import YOLO

    fingerprint = data_fingerprint(data)
    device = resolve_device(cfg.device)
    project = resolve_path(cfg.project)
    logger, commit = open_run(cfg, fingerprint)
    if on_run is not None:
        on_run(logger.run_id)
    name = cfg.run_name or (logger.run_id[:12] if logger.run_id else time.strftime("run-%Y%m%d-%H%M%S"))
    started = time.perf_counter()
    resumed_from = (cfg.resume_from or "scratch") if cfg.run_id else None
    run_log = TrainingLog(logger, data, fingerprint, commit, resumed_from)
    model = YOLO(source)
    model.add_callback("on_pretrain_routine_start", size_threads)
    model.add_callback("on_val_start", size_threads)
    model.add_callback("on_pretrain_routine_start", run_log.on_start)
    if epoch_logging:
        model.add_callback("on_fit_epoch_end", per_epoch(run_log.on_epoch))
    for event, functions in (callbacks or {}).items():
        for fn in functions:
            model.add_callback(event, fn)
    status = "FAILED"
    try:
        model.train(trainer=trainer, **train_arguments(cfg, data, device, project, name))
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        # SystemExit is how Ray Tune stops a trial (ASHA); either way the run was cut short.
        status = "KILLED"
        raise
    finally:
        trainer = getattr(model, "trainer", None)
        save_dir = Path(trainer.save_dir) if trainer is not None else project / name
        run_log.outputs(trainer, save_dir, epoch_logging)
        if status != "FINISHED":
            logger.end(status)

    return finish_run(cfg, logger, trainer, save_dir, fingerprint, started)


def open_run(cfg: TrainConfig, fingerprint: str) -> tuple[RunLogger, str | None]:
    """The training's MLflow run (new, or reopened when a restarted trial continues its own), and
    the git commit it records."""
    tags = {"facemask.version": __version__, "data.fingerprint": fingerprint, **cfg.tags}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    logger = RunLogger(
        cfg.experiment,
        cfg.run_name,
        tags,
        parent_run_id=cfg.parent_run_id,
        tracking_uri=cfg.tracking_uri,
        run_id=cfg.run_id,
        reopen=cfg.run_id is not None,
        enabled=cfg.tracking,
    )
    return logger, commit


def finish_run(
    cfg: TrainConfig, logger: RunLogger, trainer, save_dir: Path, fingerprint: str, started: float
) -> TrainResult:
    """Log a finished training's final metrics, register its best weights when asked, and end its run."""
    final = {metric_key(k): float(v) for k, v in (trainer.metrics or {}).items()}
    best = save_dir / "weights" / "best.pt"
    version = None
    try:
        logger.log_metrics({f"final/{k.split('/', 1)[-1]}": v for k, v in final.items() if k.startswith("val/")})
        if cfg.register and logger.run_id:
            fields = {**version_tags(final), "data.fingerprint": fingerprint}
            version = log_and_register(
                logger.run_id, best, fields, tracking_uri=logger.tracking_uri, name=cfg.registered_model
            )
            calibrate_version(f"models:/{cfg.registered_model}/{version}", cfg.data, cfg.imgsz, logger.tracking_uri)
    finally:
        logger.end("FINISHED")
    return TrainResult(
        run_id=logger.run_id,
        save_dir=save_dir,
        best=best,
        last=save_dir / "weights" / "last.pt",
        metrics=final,
        epochs_run=(trainer.epoch + 1) if trainer is not None else 0,
        seconds=time.perf_counter() - started,
        fingerprint=fingerprint,
        version=version,
        logging_failures=logger.failures,
    )


def version_tags(metrics: dict[str, float]) -> dict[str, float]:
    """Validation metrics as registry tags (`val_mAP50-95`, ...)."""
    return {k.replace("/", "_"): round(v, 5) for k, v in metrics.items() if k.startswith("val/")}
