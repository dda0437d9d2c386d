"""Pure helpers, each checked against known answers (the fast tier: `make test-fast`)."""

from __future__ import annotations

import io
import struct
import zlib
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner
from PIL import Image

from facemask.cli.base import FacemaskGroup
from facemask.core.errors import ConfigError, FacemaskError, ModelNotFoundError
from facemask.core.modelref import find_weights, model_uri_for, parse_models_uri
from facemask.core.settings import AugmentConfig, PrepareConfig, StudyConfig, TrainConfig, default, validate_fractions
from facemask.quality.bootstrap import Interval
from facemask.quality.promotion import promotion_decision
from facemask.serving.api_schema import APIError
from facemask.serving.request_checks import check_model_id, declared_size, decode_image, inspect_image
from facemask.tracking import check_tracking_reachable, hosts_elsewhere
from facemask.tracking.runs import RunLogger, flatten, metric_key
from facemask.training.resources import max_concurrency
from facemask.training.space import load_search_space
from facemask.training.tune import trial_status

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


# ---------------------------------------------------------------- promotion gate


@pytest.mark.parametrize(
    "args, promoted, reason",
    [
        (("2", 0.5, "2", 0.4, True), False, "already holds"),
        (("3", None, "2", 0.4, False), True, "forced"),
        (("3", 0.5, None, None, False), True, "no version held"),
        (("3", 0.5, "2", None, True), True, "never evaluated"),
        (("3", 0.5, "2", 0.4, False), False, "different data"),
        (("3", 0.5, "2", 0.4, True), False, "no stored per-image predictions"),
        (
            ("3", 0.5, "2", 0.4, True, Interval(0.1, 0.02, 0.18)),
            True,
            "better than version 2: Δ mAP50-95 +0.100 [+0.020, +0.180]",
        ),
        (
            ("3", 0.41, "2", 0.4, True, Interval(0.012, -0.018, 0.041)),
            False,
            "not distinguishable from version 2: Δ mAP50-95 +0.012 [-0.018, +0.041]",
        ),
    ],
)
def test_promotion_decision(args, promoted, reason):
    force = reason == "forced"
    difference = args[5] if len(args) > 5 else None
    decided, why = promotion_decision(*args[:5], force=force, difference=difference)
    assert decided is promoted and reason in why


def test_promotion_refuses_an_unevaluated_candidate():
    with pytest.raises(ConfigError, match="facemask evaluate"):
        promotion_decision("3", None, "2", 0.4, True)


# ---------------------------------------------------------------- request checks


def png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def zero_size_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_declared_size_reads_png_and_bmp_headers():
    assert declared_size(png_bytes(7, 5)) == (7, 5)
    bmp = io.BytesIO()
    Image.new("RGB", (9, 4)).save(bmp, format="BMP")
    assert declared_size(bmp.getvalue()) == (9, 4)
    assert declared_size(b"GIF89a....") == (None, None)


@pytest.mark.parametrize(
    "make, status, error",
    [
        (lambda: b"not an image at all", 400, "not_an_image"),
        (zero_size_png, 400, "zero_size_image"),
        (lambda: png_bytes(300, 300), 413, "too_many_pixels"),
        (lambda: _gif(), 415, "unsupported_format"),
    ],
)
def test_inspect_image_refuses_with_status_and_code(make, status, error):
    with pytest.raises(APIError) as err:
        inspect_image(make(), max_pixels=200 * 200)
    assert (err.value.status, err.value.error) == (status, error)


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (4, 4)).save(buffer, format="GIF")
    return buffer.getvalue()


def test_inspect_accepts_and_decode_refuses_a_truncated_image():
    data = png_bytes(64, 64)
    image = inspect_image(data, max_pixels=10**6)
    assert image.size == (64, 64) and image.format == "PNG"
    jpeg = io.BytesIO()
    Image.effect_noise((256, 256), 50).convert("RGB").save(jpeg, format="JPEG")
    truncated = jpeg.getvalue()[: len(jpeg.getvalue()) // 3]
    with pytest.raises(APIError) as err:
        decode_image(truncated, max_pixels=10**6)
    assert err.value.error == "truncated_image"


@pytest.mark.parametrize(
    "model_id, ok",
    [
        ("3", True),
        ("champion", True),
        ("v1.2_rc-1", True),
        ("", True),
        ("../etc", False),
        ("a b", False),
        ("x" * 65, False),
        ("-lead", False),
    ],
)
def test_check_model_id(model_id, ok):
    if ok:
        assert check_model_id(model_id) == model_id
    else:
        with pytest.raises(APIError) as err:
            check_model_id(model_id)
        assert err.value.status == 400


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


# ---------------------------------------------------------------- unusual image files


def test_a_16_bit_grey_png_is_scaled_not_clipped_to_white(tmp_path):
    import numpy as np

    from facemask.detection.detector import upright_rgb

    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (16, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as opened:
        assert opened.mode.startswith("I")
        rgb = np.asarray(upright_rgb(opened))
    assert rgb.shape == (16, 64, 3)
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and 100 < rgb.mean() < 155


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.mkdir(), "a folder named like an image"),
        (lambda p: p.symlink_to(p.parent / "nowhere.jpg"), "broken or looping link"),
        (lambda p: p.symlink_to(p), "broken or looping link"),
        (lambda p: p.write_bytes(b"garbage, not a JPEG"), "not an image Pillow can read"),
    ],
)
def test_unreadable_files_get_a_reason_a_user_can_act_on(tmp_path, make, reason):
    from facemask.video.batch import unreadable_reason

    path = tmp_path / "photo.jpg"
    make(path)
    try:
        with Image.open(path) as image:
            image.load()
        pytest.fail("Pillow read it")
    except Exception as exc:
        assert reason in unreadable_reason(path, exc)


# ---------------------------------------------------------------- prepare: which engine auto picks


@pytest.fixture
def no_cluster(monkeypatch):
    """No Ray joined in this process, no RAY_ADDRESS, not inside `ray job submit`."""
    import sys

    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(is_initialized=lambda: False))
    for key in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir("/")


def voc_folder(tmp_path, annotations: int):
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    for i in range(annotations):
        (tmp_path / "annotations" / f"a{i}.xml").write_text("<annotation/>")
    (tmp_path / "annotations" / "notes.txt").write_text("not an annotation")
    return tmp_path


@pytest.mark.parametrize(
    "annotations, cpus, local_cluster_ok, expected",
    [
        (4, 2, True, "local"),  # small: starting Ray costs more than it saves
        (5, 2, True, "ray"),  # at the threshold, with a second core
        (50, 1, True, "local"),  # one core: nothing to run in parallel
        (50, 2, False, "local"),  # a library caller never has a cluster started for it
    ],
)
def test_auto_engine_weighs_input_size_and_cores(
    no_cluster, tmp_path, monkeypatch, annotations, cpus, local_cluster_ok, expected
):
    from facemask.data import pipeline

    monkeypatch.setattr(pipeline, "RAY_MIN_ITEMS", 5)
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: cpus)
    cfg = PrepareConfig(source=voc_folder(tmp_path, annotations), out=tmp_path / "out")
    assert cfg.engine == "auto"
    engine, why = pipeline.choose_engine(cfg, local_cluster_ok=local_cluster_ok)
    assert engine == expected
    assert (f"{annotations} annotations" in why) if cpus > 1 else why.startswith("one CPU")


@pytest.mark.parametrize("env", [{"RAY_ADDRESS": "127.0.0.1:6379"}, {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}])
def test_auto_engine_uses_a_connected_cluster_even_for_a_small_input(no_cluster, tmp_path, monkeypatch, env):
    from facemask.data.pipeline import choose_engine

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = PrepareConfig(source=voc_folder(tmp_path, 1), out=tmp_path / "out")
    assert choose_engine(cfg, local_cluster_ok=False) == ("ray", "a Ray cluster is connected")


def test_explicit_engine_and_a_missing_source_are_left_to_prepare(no_cluster, tmp_path):
    from facemask.data.pipeline import choose_engine

    assert choose_engine(PrepareConfig(source=tmp_path, out=tmp_path / "o", engine="ray"))[0] == "ray"
    assert choose_engine(PrepareConfig(source=tmp_path / "missing", out=tmp_path / "o"))[0] == "local"


def test_a_gpu_that_torch_cannot_see_is_refused_unless_emulating(monkeypatch):
    """Ray's GPU ids with no CUDA: one line naming the GPU and the fix; FACEMASK_GPU_AS_CPU=1 computes on the CPU."""
    import ray
    import torch

    from facemask.core.errors import ConfigError
    from facemask.core.runtime import GPU_AS_CPU_ENV, check_given_gpus

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(GPU_AS_CPU_ENV, raising=False)
    with pytest.raises(
        ConfigError, match=r"trial t was given GPU 1 by Ray on .* sees no CUDA device.*--gpus-per-trial 0"
    ):
        check_given_gpus("trial t")
    monkeypatch.setenv(GPU_AS_CPU_ENV, "1")
    assert check_given_gpus("trial t") == ["1"]
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    monkeypatch.delenv(GPU_AS_CPU_ENV)
    assert check_given_gpus("trial t") == []


def test_a_dataset_input_is_recorded_as_mlflow_records_a_file(tmp_path):
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from facemask.tracking.runs import dataset_input

    data = tmp_path / "data.yaml"
    data.write_text("names: [a]\n")
    digest = "0123456789abcdef" * 4
    entity = dataset_input(str(data), "facemask-data", digest, "training")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = MetaDataset(resolve_dataset_source(str(data)), name="facemask-data", digest=digest[:36])
    expected = theirs._to_mlflow_entity()
    mine = entity.dataset
    assert (mine.name, mine.digest, mine.source_type, mine.source) == (
        expected.name,
        expected.digest,
        expected.source_type,
        expected.source,
    )
    assert [(t.key, t.value) for t in entity.tags] == [("mlflow.data.context", "training")]


@pytest.mark.parametrize(
    "path, route",
    [
        ("/predict", "/predict"),
        ("/secured/predict", "/predict"),
        ("/predict/image", "/predict/image"),
        ("/models", "/models"),
        ("/model", "/model"),
        ("/live/streams", "/live/streams"),
        ("/", "/"),
        ("/secured", "/"),
        ("/wp-admin/setup.php", "other"),
    ],
)
def test_a_request_path_becomes_a_bounded_route_label(path, route):
    from facemask.serving.metrics import route_of

    assert route_of(path) == route
