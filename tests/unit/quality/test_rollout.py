"""Rollouts kept in a real MLflow registry (a SQLite store): a promotion remembered, a canary
and its share, a rollback undoing the last step; and a replica's split of its default traffic."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from facemask.cli import main
from facemask.cli.serve import autoscaling_config
from facemask.core.errors import ConfigError
from facemask.quality.rollout import move_alias, rollback, start_canary, traffic
from facemask.serving.models import Models


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    """A registered model with versions 1, 2 and 3 and no alias, in a fresh SQLite store."""
    from facemask.tracking import client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    c = client(uri)
    c.create_registered_model("m")
    for _ in range(3):
        c.create_model_version("m", source=str(tmp_path), run_id=None)
    return uri


def test_promotions_are_remembered_and_rollbacks_walk_them_back(registry):
    assert traffic("m", "champion", registry).holder is None
    for version in ("1", "2", "3"):
        move_alias("m", "champion", version, registry)
    assert traffic("m", "champion", registry) == traffic("m", "champion", registry)
    state = traffic("m", "champion", registry)
    assert (state.holder, state.previous, state.challenger) == ("3", ("1", "2"), None)
    done = rollback("m", "champion", registry)
    assert (done.from_version, done.to_version, done.ended_canary) == ("3", "2", False)
    assert rollback("m", "champion", registry).to_version == "1"
    with pytest.raises(ConfigError, match="no earlier holder recorded"):
        rollback("m", "champion", registry)
    assert traffic("m", "champion", registry).holder == "1"


def test_a_canary_takes_its_share_until_a_promotion_or_a_rollback_ends_it(registry):
    move_alias("m", "champion", "1", registry)
    start_canary("m", "champion", "2", 10, registry)
    state = traffic("m", "champion", registry)
    assert (state.holder, state.challenger, state.percent) == ("1", "2", 10.0)
    done = rollback("m", "champion", registry)  # the last step was the canary: only it is undone
    assert done.ended_canary and done.to_version == "1"
    assert traffic("m", "champion", registry).challenger is None and traffic("m", "champion", registry).holder == "1"

    start_canary("m", "champion", "2", 50, registry)
    move_alias("m", "champion", "2", registry)  # promoting ends it
    state = traffic("m", "champion", registry)
    assert (state.holder, state.challenger, state.percent, state.previous) == ("2", None, 0.0, ("1",))


@pytest.mark.parametrize(
    "version, percent, message",
    [("2", 0, "between 0 and 100"), ("2", 100, "between 0 and 100"), ("1", 10, "already holds @champion")],
)
def test_a_canary_that_cannot_run_is_refused(registry, version, percent, message):
    move_alias("m", "champion", "1", registry)
    with pytest.raises(ConfigError, match=message):
        start_canary("m", "champion", version, percent, registry)


def test_the_commands_promote_a_canary_and_roll_back(registry):
    runner = CliRunner()
    promoted = runner.invoke(main, ["promote", "--model-uri", "models:/m/1", "--force"])
    assert promoted.exit_code == 0, promoted.output
    canary = runner.invoke(main, ["promote", "--model-uri", "models:/m/2", "--force", "--canary", "20", "--json"])
    assert canary.exit_code == 0, canary.output
    assert '"canary_percent": 20.0' in canary.output and '"holder": "1"' in canary.output
    assert "ended the canary of version 2" in runner.invoke(main, ["rollback", "--registered-model", "m"]).output
    refused = runner.invoke(main, ["rollback", "--model", "m"])  # the former name, still taken with a note
    assert refused.exit_code == 2 and "no earlier holder recorded" in refused.output
    assert "--model is now --registered-model" in refused.output
    # A share out of range is refused before the gate reads anything.
    bad = runner.invoke(main, ["promote", "--model-uri", "models:/m/3", "--canary", "150"])
    assert bad.exit_code == 2 and "--canary 150: a share of the traffic between 0 and 100" in bad.output


@pytest.mark.parametrize("percent, requests, expected", [(25, 100, 25), (10, 95, 9), (50, 7, 3), (1, 99, 0)])
def test_a_replica_sends_exactly_its_share_to_the_challenger(percent, requests, expected):
    default, challenger = SimpleNamespace(name="default"), SimpleNamespace(name="challenger")
    models = Models(SimpleNamespace(), default, "cpu", None)
    models.challenger, models.percent = challenger, percent
    picked = [models.default_or_challenger() for _ in range(requests)]
    assert sum(1 for m in picked if m is challenger) == expected
    models.challenger = None
    assert models.default_or_challenger() is default


def test_autoscale_bounds_become_serves_autoscaling_config():
    config = autoscaling_config("1:4", 8, 10, 120)
    assert config == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8,
        "upscale_delay_s": 10,
        "downscale_delay_s": 120,
    }
    for bad in ("4", "0:2", "3:2", "a:b", "1:"):
        with pytest.raises(ConfigError, match="MIN:MAX"):
            autoscaling_config(bad, 8, 10, 120)
