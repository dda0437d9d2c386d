"""MLflow helpers: metric keys, flattened params, the run logger through an outage. Each checked
against known answers (the fast tier: `make test-fast`)."""

from __future__ import annotations

import pytest

from facemask.tracking.runs import RunLogger, flatten, metric_key

# ---------------------------------------------------------------- tracking


@pytest.mark.parametrize(
    "name, key",
    [
        ("metrics/mAP50-95(B)", "val/mAP50-95"),
        ("metrics/precision(B)", "val/precision"),
        ("train/box_loss", "train/box_loss"),
        ("lr/pg0", "lr/pg0"),
        ("weird:key*", "weird_key_"),
    ],
)
def test_metric_key(name, key):
    assert metric_key(name) == key


def test_flatten_nests_dots_and_truncates():
    out = flatten({"a": {"b": 1, "c": {"d": None}}, "long": "x" * 7000})
    assert out == {"a.b": "1", "a.c.d": "None", "long": "x" * 6000}


class FlakyClient:
    """An MLflow client stand-in whose log_batch fails `failures` times, then records what it gets."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.metrics: list = []
        self.terminated: str | None = None

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("server down")
        self.metrics.extend(metrics)

    def set_terminated(self, run_id, status):
        self.terminated = status


def flaky_logger(failures: int, cooldown_s: float) -> tuple[RunLogger, FlakyClient]:
    logger = RunLogger(run_id="run", tracking_uri="http://127.0.0.1:9", system_metrics=False, cooldown_s=cooldown_s)
    fake = FlakyClient(failures)
    logger._client = fake
    return logger, fake


def test_run_logger_backs_off_and_keeps_metrics_during_an_outage(caplog):
    logger, fake = flaky_logger(failures=1, cooldown_s=60)
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.log_metrics({"loss": 0.5}, step=2)  # inside the cool-down: not even tried
    assert fake.calls == 1 and logger.failures == 1 and fake.metrics == []
    assert sum("MLflow logging failed" in r.message for r in caplog.records) == 1
    assert logger.end("FINISHED", wait_s=0) is True  # ending retries at once and sends what was kept
    assert [(m.key, m.value, m.step) for m in fake.metrics] == [("loss", 1.0, 1), ("loss", 0.5, 2)]
    assert fake.terminated == "FINISHED"


def test_run_logger_retries_after_the_cooldown():
    logger, fake = flaky_logger(failures=1, cooldown_s=0)
    logger.log_metrics({"a": 1}, step=1)
    logger.log_metrics({"a": 2, "b": "not a number"}, step=2)
    assert [(m.key, m.value) for m in fake.metrics] == [("a", 1.0), ("a", 2.0)]


def test_run_logger_gives_up_on_end_when_the_server_never_answers():
    logger, fake = flaky_logger(failures=10**6, cooldown_s=0)
    logger.log_metrics({"a": 1}, step=1)
    assert logger.end("FINISHED", wait_s=0) is False and fake.terminated is None


def test_a_block_on_one_store_leaves_no_store_pinned_behind_it(tmp_path, monkeypatch):
    """After `using_tracking_uri`, a client made for another server sends its registry calls
    there, and the environment names what it named before; no URI MLflow resolved stays pinned."""
    import os

    import mlflow
    from mlflow import MlflowClient

    from facemask.tracking.runs import using_tracking_uri

    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'before.db'}")
    with using_tracking_uri(f"sqlite:///{tmp_path / 'inside.db'}"):
        assert mlflow.get_registry_uri().endswith("inside.db")
    assert MlflowClient("http://127.0.0.1:5999")._registry_uri == "http://127.0.0.1:5999"
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'later.db'}")
    assert mlflow.get_tracking_uri().endswith("later.db") and mlflow.get_registry_uri().endswith("later.db")
