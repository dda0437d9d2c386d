"""What one trial asks of the cluster, how many fit at once, and the trial shapes that
cannot work, refused before a cluster is joined."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

from facemask.core.errors import ConfigError
from facemask.core.settings import DistributedConfig, StudyConfig
from facemask.training.distributed import check_workers_fit, node_resources

log = logging.getLogger("facemask.training.tune")


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
