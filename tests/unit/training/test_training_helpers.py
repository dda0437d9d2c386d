"""The study's pure helpers: trial shapes against the cluster, trial status, the search space. Each
checked against known answers (the fast tier: `make test-fast`)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from facemask.core.errors import ConfigError
from facemask.core.settings import StudyConfig
from facemask.training.resources import max_concurrency
from facemask.training.space import load_search_space
from facemask.training.summary import trial_status

# ---------------------------------------------------------------- tune


def study(**kw) -> StudyConfig:
    return StudyConfig(data="data.yaml", tracking_uri="sqlite:///mlflow.db", **kw)


@pytest.mark.parametrize(
    "kw, cluster, expected",
    [
        ({"cpus_per_trial": 1, "trials": 8}, {"CPU": 4}, 4),
        ({"cpus_per_trial": 2, "trials": 8}, {"CPU": 5}, 2),
        ({"cpus_per_trial": 1, "trials": 3}, {"CPU": 16}, 3),
        ({"cpus_per_trial": 1, "trials": 8, "max_concurrent": 2}, {"CPU": 16}, 2),
        ({"cpus_per_trial": 1, "gpus_per_trial": 0.5, "trials": 8}, {"CPU": 16, "GPU": 2}, 4),
        ({"cpus_per_trial": 1, "gpus_per_trial": 1, "trials": 8}, {"CPU": 2, "GPU": 4}, 2),
        ({"cpus_per_trial": 1, "trials": 8, "trial_resources": {"trainer": 1}}, {"CPU": 8, "trainer": 3}, 3),
        ({"cpus_per_trial": 0.5, "trials": 8}, {"CPU": 2}, 4),
        # Two Ray Train workers of one GPU each per trial: 8 GPUs hold 4 trials, none idle.
        ({"cpus_per_trial": 2, "gpus_per_trial": 2, "ray_workers_per_trial": 2, "trials": 8}, {"CPU": 16, "GPU": 8}, 4),
        ({"cpus_per_trial": 2, "ray_workers_per_trial": 2, "trials": 2}, {"CPU": 4}, 2),
    ],
)
def test_max_concurrency(kw, cluster, expected):
    assert max_concurrency(study(**kw), cluster) == expected


@pytest.mark.parametrize(
    "kw, cluster, message",
    [
        ({"cpus_per_trial": 0}, {"CPU": 4}, "must be > 0"),
        ({"cpus_per_trial": 4}, {"CPU": 2}, "only 2 CPUs"),
        ({"cpus_per_trial": 1, "gpus_per_trial": 1}, {"CPU": 4}, "has 0 GPUs; use 0"),
        ({"cpus_per_trial": 1, "trial_resources": {"trainer": 1}}, {"CPU": 4}, "0 of 'trainer'"),
        ({"cpus_per_trial": 1, "gpus_per_trial": 2}, {"CPU": 8, "GPU": 4}, "--ray-workers-per-trial 2"),
        ({"cpus_per_trial": 1, "gpus_per_trial": 4}, {"CPU": 8, "GPU": 8}, "--ray-workers-per-trial 4"),
        (
            {"cpus_per_trial": 1, "gpus_per_trial": 1, "ray_workers_per_trial": 2},
            {"CPU": 8, "GPU": 8},
            "0 or 1 whole GPU",
        ),
        (
            {"cpus_per_trial": 2, "ray_workers_per_trial": 2, "trial_resources": {"t": 1}},
            {"CPU": 8, "t": 2},
            "drop --trial-resources",
        ),
    ],
)
def test_max_concurrency_refuses_what_cannot_fit(kw, cluster, message):
    with pytest.raises(ConfigError, match=message):
        max_concurrency(study(**kw), cluster)


@pytest.mark.parametrize(
    "kw, nodes, message",
    [
        # Three workers on two CPUs: each would get 0.66 of a core.
        ({"cpus_per_trial": 2, "ray_workers_per_trial": 3}, [{"CPU": 2}], "needs one CPU per worker"),
        # A one-process trial of 3 CPUs fits the cluster's 4, but no node of 2.
        ({"cpus_per_trial": 3}, [{"CPU": 2}, {"CPU": 2}], "no node has that much"),
        # Two workers of 2.995 CPUs: each fits no 2-CPU node.
        (
            {"cpus_per_trial": 6, "ray_workers_per_trial": 2},
            [{"CPU": 2}, {"CPU": 2}, {"CPU": 2}],
            "no node can hold one worker",
        ),
    ],
)
def test_a_trial_that_fits_no_node_is_refused(kw, nodes, message):
    cluster = {"CPU": sum(n["CPU"] for n in nodes)}
    with pytest.raises(ConfigError, match=message):
        max_concurrency(study(**kw), cluster, nodes)


def test_two_workers_and_their_driver_fit_two_cpus_exactly():
    from facemask.training.resources import TRIAL_DRIVER_CPUS, trial_workers

    assert max_concurrency(study(cpus_per_trial=2, ray_workers_per_trial=2, trials=2), {"CPU": 2}, [{"CPU": 2}]) == 1
    shares = trial_workers(2, 0, 2, "w")
    assert shares.cpus_per_worker * 2 + TRIAL_DRIVER_CPUS == pytest.approx(2)


@pytest.mark.parametrize(
    "error, metrics, epochs, expected",
    [
        (None, {"epoch": 5}, 5, "finished"),
        (None, {"epoch": 6}, 5, "finished"),
        (None, {"epoch": 2}, 5, "stopped_early"),
        (None, {}, 5, "stopped_early"),
        (RuntimeError("boom"), {"epoch": 5}, 5, "failed"),
    ],
)
def test_trial_status(error, metrics, epochs, expected):
    assert trial_status(SimpleNamespace(error=error, metrics=metrics), epochs) == expected


def test_packaged_search_space_is_valid():
    space, baseline = load_search_space()
    assert "lr0" in space and space["lr0"]["type"] == "loguniform"
    assert baseline and set(baseline[0]) <= set(space)


@pytest.mark.parametrize(
    "text, message",
    [
        ("baseline: {}\n", "no `space:`"),
        ("space: {lr00: {type: uniform, low: 0, high: 1}}\n", "unknown hyperparameter 'lr00'"),
        ("space: {lr0: {type: normal, low: 0, high: 1}}\n", "type must be one of"),
        ("space: {lr0: {type: uniform, low: 1, high: 0}}\n", "numeric low < high"),
        ("space: {optimizer: {type: choice}}\n", "needs `values"),
        ("space: {lr0: {type: uniform, low: 0, high: 1}}\nbaseline: {lrf: 0.1}\n", "not in `space`"),
    ],
)
def test_search_space_errors_name_file_and_fix(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_search_space(path)
    assert str(path) in str(err.value)


def test_a_trial_trained_by_ray_train_workers_gives_its_checkpoint_by_path_and_is_still_found(tmp_path):
    """Ray's TuneReportCallback hands Tune a Ray Train checkpoint's path as a metric, never the
    checkpoint: a study closing its trials' runs finds best.pt through that path."""
    import inspect

    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

    from facemask.training.finish import trial_checkpoint

    source = inspect.getsource(TuneReportCallback.after_report)
    assert "metrics[CHECKPOINT_PATH_KEY] = checkpoint.path" in source and "checkpoint=" not in source
    folder = tmp_path / "checkpoint_2026-12-06_17-49-09.245707"
    folder.mkdir()
    (folder / "best.pt").write_bytes(b"weights")
    by_path = SimpleNamespace(checkpoint=None, metrics={"trial_id": "a", CHECKPOINT_PATH_KEY: str(folder)})
    with trial_checkpoint(by_path).as_directory() as found:
        assert (Path(found) / "best.pt").read_bytes() == b"weights"
    own = object()
    assert trial_checkpoint(SimpleNamespace(checkpoint=own, metrics={CHECKPOINT_PATH_KEY: str(folder)})) is own
    assert trial_checkpoint(SimpleNamespace(checkpoint=None, metrics={"trial_id": "b"})) is None
