"""Shared fixtures. Everything a test writes goes under tmp_path; services are started here and stopped here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = ROOT.parent / "shared" / "datasets" / "face-mask-detection"


@pytest.fixture(scope="session", autouse=True)
def _isolated_settings(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep Ultralytics' per-user settings and any MLflow default store out of the user's home."""
    config = tmp_path_factory.mktemp("ultralytics-config")
    os.environ["YOLO_CONFIG_DIR"] = str(config)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"


@pytest.fixture(scope="session")
def real_source() -> Path:
    if not (REAL_DATA / "annotations").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (../shared is absent outside CI)")
    return REAL_DATA


@pytest.fixture(scope="session")
def synth_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from facemask.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, images=36, seed=7)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance for the session: two CPUs, no dashboard."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
