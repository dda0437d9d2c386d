"""serve/config.yaml and serve/app.py: valid for Serve, and consistent with the application's own names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())


def test_valid_against_serve_schema(config):
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)


def test_args_and_deployments_match_the_app(config):
    from facemask.serving import AppArgs, FacemaskServer

    (app,) = config["applications"]
    assert app["import_path"] == "facemask.serving:app"
    AppArgs.model_validate(app["args"])  # unknown keys are refused
    names = {d["name"] for d in app["deployments"]}
    assert names == {FacemaskServer.name}
    detector = app["deployments"][0]
    assert 0 < detector["ray_actor_options"]["num_gpus"] < 1, "fractional GPUs per replica"
    assert detector["max_queued_requests"] > 0 and detector["max_ongoing_requests"] > 0
    scaling = detector["autoscaling_config"]
    assert scaling["min_replicas"] <= scaling["max_replicas"] and scaling["target_ongoing_requests"] > 0
    assert config["http_options"]["host"] == "127.0.0.1", "exposing the proxy is an explicit choice"


def test_builder_of_serve_run_makes_the_deployment(tmp_path):
    from ray.serve import Application

    from serve.app import app

    built = app({"model_uri": str(tmp_path / "best.pt"), "max_batch_size": 4})
    assert isinstance(built, Application)
    with pytest.raises(ValueError, match="backend"):
        app({"backend": "tensorrt"})
    with pytest.raises(ValueError, match="not_a_field"):
        app({"not_a_field": 1})


def test_replicas_get_serve_env_with_what_the_user_set_winning(monkeypatch):
    from facemask.core.runtime import SERVE_ENV
    from facemask.serving import FacemaskServer, with_serve_env

    monkeypatch.delenv("RAY_SERVE_LOG_TO_STDERR", raising=False)
    env = with_serve_env({}, FacemaskServer)["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env == SERVE_ENV and env["RAY_SERVE_LOG_TO_STDERR"] == "0"
    monkeypatch.setenv("RAY_SERVE_LOG_TO_STDERR", "1")  # exported where the app is built
    env = with_serve_env({}, FacemaskServer)["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env["RAY_SERVE_LOG_TO_STDERR"] == "1"
    options = {"ray_actor_options": {"runtime_env": {"env_vars": {"RAY_SERVE_LOG_TO_STDERR": "0", "X": "y"}}}}
    env = with_serve_env(options, FacemaskServer)["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env["RAY_SERVE_LOG_TO_STDERR"] == "0" and env["X"] == "y"
