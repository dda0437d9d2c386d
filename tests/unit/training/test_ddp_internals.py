"""The Ultralytics internals that Ray Train DDP relies on: a changed internal fails here, by name,
instead of hanging a worker group."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest

from facemask.core.errors import ConfigError
from facemask.core.settings import DistributedConfig, TrainConfig
from facemask.training.distributed import check_distributed


def test_ultralytics_is_in_the_range_the_ddp_trainer_was_tested_with():
    major, minor = (int(x) for x in version("ultralytics").split(".")[:2])
    assert (major, minor) == (8, 4), (
        f"facemask.training.distributed was tested with Ultralytics 8.4, not {version('ultralytics')}"
    )


def test_the_trainer_internals_the_ddp_subclass_overrides_are_still_there():
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.models.yolo.detect import DetectionTrainer

    init = inspect.getsource(BaseTrainer.__init__)
    assert "self.world_size = world_size" in init and "self.ddp =" in init
    setup = inspect.getsource(BaseTrainer._setup_train)
    assert "nn.parallel.DistributedDataParallel(" in setup and "device_ids=[self.device.index]" in setup
    assert "self._setup_ddp()" in inspect.getsource(BaseTrainer._do_train)
    assert "self.final_eval()" in inspect.getsource(BaseTrainer._do_train)
    assert "self.preprocess_batch(batch)" in inspect.getsource(BaseTrainer._do_train)
    assert "return metrics, fitness" in inspect.getsource(BaseTrainer.validate)
    assert "def preprocess_batch" in inspect.getsource(DetectionTrainer)


def test_the_ddp_trainer_class_builds_and_overrides_what_it_must():
    from facemask.compat.ultralytics import ddp_trainer_class

    trainer = ddp_trainer_class()
    for name in ("_setup_ddp", "_setup_train", "preprocess_batch", "validate", "final_eval", "__init__"):
        assert name in vars(trainer), name


@pytest.mark.parametrize(
    "train_kw, ray_kw, message",
    [
        ({}, {"workers": 0}, "at least 1"),
        ({}, {"workers": 2, "gpus_per_worker": 2}, "0 or 1"),
        ({"batch": 2}, {"workers": 4}, "global batch"),
        ({"device": "0,1"}, {"workers": 2}, "--gpus-per-worker"),
    ],
)
def test_distributed_settings_that_cannot_work_are_refused_in_one_line(train_kw, ray_kw, message):
    with pytest.raises(ConfigError, match=message):
        check_distributed(
            TrainConfig(data="data.yaml", tracking_uri="sqlite:///mlflow.db", **train_kw), DistributedConfig(**ray_kw)
        )
