"""The leaves' helpers: model references, configs and their defaults, the CLI's errors, where results
go. Each checked against known answers (the fast tier: `make test-fast`)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from facemask.cli.base import FacemaskGroup
from facemask.core.errors import ConfigError, FacemaskError, ModelNotFoundError
from facemask.core.modelref import find_weights, model_uri_for, parse_models_uri
from facemask.core.settings import AugmentConfig, PrepareConfig, StudyConfig, TrainConfig, default, validate_fractions
from facemask.tracking import check_tracking_reachable, hosts_elsewhere

# ---------------------------------------------------------------- model references


@pytest.mark.parametrize(
    "uri, parsed",
    [
        ("models:/facemask-detector/3", ("facemask-detector", "3", None)),
        ("models:/facemask-detector@champion", ("facemask-detector", None, "champion")),
        ("models:/other@a@b", ("other", None, "a@b")),
    ],
)
def test_parse_models_uri(uri, parsed):
    assert parse_models_uri(uri) == parsed


@pytest.mark.parametrize(
    "uri",
    [
        "models:/facemask-detector",
        "models:/facemask-detector/latest",
        "models:/@champion",
        "models:/name@",
        "runs:/abc/model",
    ],
)
def test_parse_models_uri_refuses_malformed(uri):
    with pytest.raises(ModelNotFoundError, match="expected models:/NAME/VERSION or models:/NAME@ALIAS"):
        parse_models_uri(uri)


@pytest.mark.parametrize(
    "model_id, default_uri, expected",
    [
        ("3", "models:/mine@champion", "models:/mine/3"),
        ("staging", "models:/mine/2", "models:/mine@staging"),
        ("4", "/weights/best.pt", "models:/facemask-detector/4"),
    ],
)
def test_model_uri_for(model_id, default_uri, expected):
    assert model_uri_for(model_id, default_uri) == expected


def test_find_weights_prefers_best_and_the_backend(tmp_path):
    for name in ("artifacts/last.pt", "artifacts/best.pt", "artifacts/best.onnx"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert find_weights(tmp_path).name == "best.pt"
    assert find_weights(tmp_path, prefer=".onnx").name == "best.onnx"
    with pytest.raises(ModelNotFoundError, match="no .pt or .onnx"):
        find_weights(tmp_path / "artifacts" / "missing")


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "fractions, message",
    [
        ((0.7, 0.2), "three fractions"),
        ((0.7, 0.0, 0.3), "train and val must be > 0"),
        ((0.7, 0.2, 0.2), "sums to 1.100"),
    ],
)
def test_validate_fractions(fractions, message):
    with pytest.raises(ConfigError, match=message):
        validate_fractions(fractions)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"classes": ("no_such_class",)}, "unknown class 'no_such_class'"),
        ({"blend": "smudge"}, "--blend 'smudge'"),
        ({"balance_ratio": 1.5}, "between 0 and 1"),
        ({"pastes_per_image": 0}, "at least 1"),
    ],
)
def test_augment_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        AugmentConfig(**kw).validate()


def test_prepare_config_refuses_an_unknown_engine():
    with pytest.raises(ConfigError, match="--engine 'spark'"):
        PrepareConfig(source="in", out="out", engine="spark").validate()


@pytest.mark.parametrize(
    "config, name, value",
    [
        (TrainConfig, "epochs", 50),
        (TrainConfig, "model", "yolo26s.pt"),
        (StudyConfig, "trials", 20),
        (StudyConfig, "trial_resources", {}),
        (AugmentConfig, "blend", "feather"),
    ],
)
def test_default_reads_the_dataclass(config, name, value):
    assert default(config, name) == value


def test_cli_defaults_are_the_dataclass_defaults():
    from facemask.cli import main

    def option(command, name):
        return next(p for p in command.params if p.name == name)

    train = main.commands["train"]
    for name in ("model", "epochs", "imgsz", "batch", "device", "experiment", "seed", "workers", "project"):
        assert option(train, name).default == default(TrainConfig, name), name
    tune = main.commands["tune"]
    for name in ("trials", "epochs", "storage", "grace_period", "reduction_factor", "max_failures", "metric"):
        assert option(tune, name).default == default(StudyConfig, name), name


# ---------------------------------------------------------------- the CLI's error wrapper


def wrapped(exc: BaseException) -> click.Group:
    @click.group(cls=FacemaskGroup)
    def cli() -> None:
        pass

    @cli.command()
    def go() -> None:
        raise exc

    return cli


def test_a_user_error_is_one_line_and_exit_2():
    result = CliRunner().invoke(wrapped(ConfigError("--epochs -1: must be positive; pass --epochs 10")), ["go"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --epochs -1: must be positive; pass --epochs 10"


def test_a_bug_says_it_is_one_and_shows_the_traceback_under_debug(monkeypatch):
    result = CliRunner().invoke(wrapped(KeyError("oops")), ["go"])
    assert result.exit_code == 1
    assert "internal error: KeyError" in result.stderr and "FACEMASK_DEBUG=1" in result.stderr
    assert "Traceback" not in result.stderr
    monkeypatch.setenv("FACEMASK_DEBUG", "1")
    debug = CliRunner().invoke(wrapped(KeyError("oops")), ["go"])
    assert debug.exit_code == 1 and "Traceback" in debug.stderr


def test_every_user_error_shares_one_base():
    from facemask.core import errors

    user_errors = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert len(user_errors) >= 8 and all(issubclass(e, FacemaskError) for e in user_errors)


# ---------------------------------------------------------------- where results go


def test_relative_paths_resolve_against_the_results_base(tmp_path, monkeypatch):
    """Outside a job: the working directory. Inside `ray job submit`: ~/facemask. FACEMASK_HOME wins."""
    from pathlib import Path

    from facemask.core.runtime import RAY_JOB_ENV, resolve_path, results_base, where_relative
    from facemask.tracking import default_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACEMASK_HOME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(RAY_JOB_ENV, raising=False)
    here = tmp_path.resolve()
    assert resolve_path("data/yolo") == here / "data" / "yolo" and where_relative("data/yolo") == ""
    assert default_tracking_uri() == f"sqlite:///{here / 'mlflow.db'}"
    monkeypatch.setenv(RAY_JOB_ENV, "{}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert results_base() == here / "home" / "facemask"
    assert resolve_path("data/yolo") == here / "home" / "facemask" / "data" / "yolo"
    assert resolve_path("/abs/out") == Path("/abs/out")
    assert "FACEMASK_HOME" in where_relative("data/yolo") and where_relative("/abs") == ""
    assert default_tracking_uri() == f"sqlite:///{here / 'home' / 'facemask' / 'mlflow.db'}"
    monkeypatch.setenv("FACEMASK_HOME", str(tmp_path / "results"))
    assert resolve_path("runs/tune") == here / "results" / "runs" / "tune"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert default_tracking_uri() == "http://tracking:5000"


NODES = [
    {"Alive": True, "NodeManagerAddress": "10.0.0.1"},
    {"Alive": True, "NodeManagerAddress": "10.0.0.2"},
    {"Alive": False, "NodeManagerAddress": "10.0.0.3"},
]


def test_hosts_elsewhere_counts_alive_nodes_on_other_machines():
    assert hosts_elsewhere(NODES, "10.0.0.1") == ["10.0.0.2"]
    assert hosts_elsewhere(NODES[:1], "10.0.0.1") == []
    # A test cluster: every node on loopback, one machine.
    assert hosts_elsewhere([{"Alive": True, "NodeManagerAddress": "127.0.0.1"}] * 2, "127.0.0.1") == []


def test_a_multi_machine_study_needs_a_reachable_tracking_server():
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI") as err:
        check_tracking_reachable("sqlite:////home/u/facemask/mlflow.db", NODES, "10.0.0.1")
    assert "10.0.0.2" in str(err.value)
    check_tracking_reachable("http://10.0.0.1:5000", NODES, "10.0.0.1")
    check_tracking_reachable("sqlite:////home/u/facemask/mlflow.db", NODES[:1], "10.0.0.1")


def test_the_results_footer_names_the_store_and_the_commands():
    from facemask.cli import results_footer

    footer = results_footer(
        "sqlite:////home/u/facemask/mlflow.db",
        "facemask-tune",
        "abc123",
        "models:/facemask-detector@champion",
        {"study": "/home/u/facemask/runs/tune/s"},
    )
    lines = footer.splitlines()
    assert lines[0] == "results:"
    assert "experiment 'facemask-tune', run abc123" in lines[1]
    assert "mlflow ui --backend-store-uri sqlite:////home/u/facemask/mlflow.db" in footer
    assert lines[-1].strip() == (
        "serve:      MLFLOW_TRACKING_URI=sqlite:////home/u/facemask/mlflow.db facemask serve "
        "--model-uri models:/facemask-detector@champion"
    )
    remote = results_footer("http://mlflow:5000", run_id="r1")
    assert "http://mlflow:5000 in a browser" in remote and "mlflow ui" not in remote


@pytest.mark.parametrize("model_uri", ["models:/facemask-detector@champion", "runs:/abc123/weights/best.pt"])
def test_a_registry_uri_without_its_store_is_refused_in_one_line(model_uri):
    from facemask.core.errors import ConfigError
    from facemask.detection.detector import resolve_model

    with pytest.raises(ConfigError, match=f"{model_uri}: a registry or run URI is looked up in an MLflow store"):
        resolve_model(model_uri)
