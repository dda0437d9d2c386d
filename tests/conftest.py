"""Shared fixtures. Everything a test writes goes under tmp_path; services are started here and stopped here."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.services import tiny_training

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = ROOT.parent / "shared" / "datasets" / "face-mask-detection"

# Each test's time and the machine's CPU, the per-test and suite budgets (tests/budget.py).
# Tests side by side under pytest-xdist, and the ones that need the machine alone (tests/machine_lock.py).
pytest_plugins = ["tests.budget", "tests.machine_lock"]


_RAY_AUTH_DIR = None


def pytest_configure(config: pytest.Config) -> None:
    """Ray 2.60 turns token auth on and would write ~/.ray/auth_token; keep a token for this run instead.

    Set before collection: Ray reads RAY_AUTH_MODE once per process, at its first import,
    and some test modules import ray at module level.
    """
    global _RAY_AUTH_DIR
    _RAY_AUTH_DIR = tempfile.mkdtemp(prefix="facemask-ray-auth-")
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker:
        # pytest-xdist runs tests side by side: each worker's Ray gets its own temp dir, where
        # `ray.init()` looks for a cluster to join (ray_current_cluster), so a command started
        # without an address never joins the cluster another worker's test started. Short: Ray's
        # socket paths under it must fit in 107 characters.
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix=f"fm-{worker}-")
    token = Path(_RAY_AUTH_DIR) / "auth_token"
    token.write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _RAY_AUTH_DIR:
        shutil.rmtree(_RAY_AUTH_DIR, ignore_errors=True)
    if getattr(config, "workerinput", None) and os.environ.get("RAY_TMPDIR"):
        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _isolated_settings(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep Ultralytics' per-user settings and any MLflow default store out of the user's home."""
    config = tmp_path_factory.mktemp("ultralytics-config")
    os.environ["YOLO_CONFIG_DIR"] = str(config)
    os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"


@pytest.fixture(scope="session")
def real_source() -> Path:
    if not (REAL_DATA / "annotations").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (../shared is absent outside CI)")
    return REAL_DATA


@pytest.fixture(scope="session")
def synth_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from facemask.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, images=36, seed=7)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance for the session: two CPUs, no dashboard, Serve's proxy with the guard."""
    import ray

    from tests.services import PROXY_TEST_ENV

    if not ray.is_initialized():
        # The node's processes (Serve's proxy among them) take their environment from here.
        with pytest.MonkeyPatch.context() as env:
            for key, value in PROXY_TEST_ENV.items():
                env.setenv(key, value)
            # "local": a fresh instance, never a `ray start` cluster another test left behind.
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` on loopback for the whole session."""
    from tests.services import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture()
def tracking(mlflow_server, monkeypatch, request):
    """Point MLflow at the session server, with an experiment name unique to this test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    return {"uri": mlflow_server.uri, "experiment": f"test-{request.node.name}-{os.getpid()}"}


@pytest.fixture(scope="session")
def tiny_data(synth_source, tmp_path_factory) -> Path:
    """A prepared YOLO dataset from the session's synthesised images: data.yaml path."""
    from facemask.data.pipeline import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("tiny-yolo")
    return prepare(PrepareConfig(source=synth_source, out=out, engine="local", plots=False)).data_yaml


@pytest.fixture(scope="session")
def registered_detector(tiny_data, mlflow_server, tmp_path_factory) -> dict:
    """A 1-epoch yolo26n registered twice under its own name: v1 holds @champion, v2 is the other.

    Untrained enough that its scores are tiny, so tests that need boxes ask for conf=0.
    """
    from facemask.tracking import log_and_register, set_alias
    from facemask.training.train import train

    name = "serve-test-detector"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
        result = train(
            tiny_training(
                tiny_data,
                tmp_path_factory.mktemp("serve-train"),
                experiment="serve-tests",
                register=True,
                registered_model=name,
                tracking_uri=mlflow_server.uri,
            )
        )
        other = log_and_register(result.run_id, result.last, {"note": "second version"}, mlflow_server.uri, name=name)
        set_alias(name, "champion", result.version, mlflow_server.uri)
    return {
        "name": name,
        "weights": result.best,
        "run_id": result.run_id,
        "champion": result.version,
        "other": other,
        "tracking_uri": mlflow_server.uri,
    }


@pytest.fixture(scope="session")
def known_image(synth_source) -> Path:
    return sorted((synth_source / "images").iterdir())[0]


# Fixtures built once per module (a Serve application, a watch, a registry). Under pytest-xdist the
# tests that use one are kept on one worker, so it is still built once per module: its
# whole-machine tests too, which still run alone (the machine lock) but on the worker that holds
# their module's services, instead of starting them a second time on the other one (about 50 s
# of the suite's critical path). The other tests that need the machine alone are one group of
# their own, run back to back (tests/machine_lock.py).
MODULE_SHARED = {"endpoint", "versions", "serve_url", "registry", "video", "watch", "two_nodes"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    from tests.machine_lock import HEAVY_GROUP, WHOLE_MACHINE_GROUP, alone, heavy

    for item in items:
        if heavy(item):  # one worker, one at a time; a heavy module's shared services stay on it
            item.add_marker(pytest.mark.xdist_group(HEAVY_GROUP))
        elif MODULE_SHARED & set(item.fixturenames):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
        elif alone(item):
            item.add_marker(pytest.mark.xdist_group(WHOLE_MACHINE_GROUP))
