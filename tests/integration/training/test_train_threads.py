"""Training uses the cores it was given (issue 48): the threads that work during a real training
step are read from the process itself (each thread's CPU time in /proc), for a plain run (every
core of the machine) and for runs inside Ray actors given 1 and 2 CPUs, as a Tune trial is."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.services import tiny_training

pytestmark = pytest.mark.integration
CORES = len(os.sched_getaffinity(0))


def thread_cpu() -> dict[int, int]:
    """Each thread of this process: its CPU time so far, in clock ticks (utime + stime)."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = int(fields[11]) + int(fields[12])
    return out


class BusyThreads:
    """Ultralytics callbacks: over each training batch (forward, backward, optimizer step), the
    threads that did at least a fifth of the busiest one's work."""

    def __init__(self) -> None:
        self.start: dict[int, int] = {}
        self.counts: list[int] = []

    def batch_start(self, trainer) -> None:
        self.start = thread_cpu()

    def batch_end(self, trainer) -> None:
        used = [ticks - self.start.get(tid, 0) for tid, ticks in thread_cpu().items()]
        busiest = max(used)
        if busiest >= 5:  # 50 ms of CPU at least: a batch, not a blip
            self.counts.append(sum(1 for ticks in used if ticks >= busiest / 5))

    def callbacks(self) -> dict:
        return {"on_train_batch_start": [self.batch_start], "on_train_batch_end": [self.batch_end]}


def busy_threads_of_a_training(data: Path, project: Path, tracking_uri: str) -> tuple[list[int], str]:
    """Train once with BusyThreads watching; (busy threads per batch, the run's torch_threads param)."""
    import mlflow

    from facemask.training.train import train

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    watcher = BusyThreads()
    result = train(tiny_training(data, project, experiment="threads"), callbacks=watcher.callbacks())
    params = mlflow.MlflowClient(tracking_uri).get_run(result.run_id).data.params
    return watcher.counts, params.get("torch_threads", "")


@pytest.mark.skipif(CORES < 2, reason="one core: there is no second one to use")
def test_a_plain_training_step_works_on_every_core(tiny_data, tracking, tmp_path):
    counts, logged = busy_threads_of_a_training(tiny_data, tmp_path, tracking["uri"])
    assert counts and max(counts) == CORES and logged == str(CORES), (counts, logged)


@pytest.mark.skipif(CORES < 2, reason="one core: a trial given 2 CPUs cannot be placed")
def test_a_trial_trains_on_the_cpus_ray_gave_it(ray_local, tiny_data, tracking, tmp_path):
    import ray
    import ray.cloudpickle

    # This module is not importable on Ray's workers (tests/integration is no package): send it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    trial = ray.remote(busy_threads_of_a_training)
    for cpus in (1, 2):
        counts, logged = ray.get(
            trial.options(num_cpus=cpus).remote(tiny_data, tmp_path / str(cpus), tracking["uri"]), timeout=600
        )
        assert counts and max(counts) == cpus and logged == str(cpus), (cpus, counts, logged)


def test_a_driver_that_started_ray_is_given_the_machine(ray_local):
    from facemask.core.runtime import cpus_given

    # Ray answers "only available when the process is a worker" in a driver: the machine is its.
    assert cpus_given() == CORES
