"""Unusual image files, and which engine `data prepare` picks. Each checked against known answers (the
fast tier: `make test-fast`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from facemask.core.errors import ConfigError
from facemask.core.settings import PrepareConfig

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
