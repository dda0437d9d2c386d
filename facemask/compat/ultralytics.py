"""Ultralytics' private parts the platform relies on, checked by tests/unit/compat/test_compat.py:

- the trainer's `_setup_ddp`, `_setup_train` (its `nn.parallel.DistributedDataParallel` call),
  `world_size`/`ddp` and `final_eval`, overridden so a Ray Train worker group trains one model
  (Ultralytics' own DDP launcher spawns its processes itself; Ray Train owns them here);
- the detection validator's `metrics.update_stats`, wrapped to keep each image's matched
  predictions, which the bootstrap intervals are computed from (Ultralytics keeps only totals);
- `BYTETracker` fed a stand-in for its Results object, to track detections that did not come
  from `model.track()` (the endpoint's batched model call made them); its `max_frames_lost`
  (`max_time_lost` before 8.4.x), set from the frame rate at construction, moved afterwards when
  the rate frames are processed at changes;
- a YOLO model's architecture rebuilt with another class count (`DetectionModel(yaml, nc=...)`)
  and swapped into a `YOLO` for export, with the `args` and `task` export reads from its model,
  to measure what a trained version will cost before it is trained (facemask.training.cost).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from facemask.compat import require

CHECKED = ("ultralytics", "8.4", "8.5")
VERSION = require(*CHECKED, __name__)


def ddp_trainer_class():
    """Ultralytics' DetectionTrainer, made to train inside a Ray Train worker group.

    Relies on (tests/unit/training/test_ddp_internals.py checks each): `_setup_ddp` and `final_eval`
    (replaced), `_setup_train`'s DistributedDataParallel call, `world_size`/`ddp` set in
    `__init__`, `preprocess_batch` once per batch, `validate` returning (metrics, fitness).
    """
    import torch
    import torch.distributed as dist
    from ultralytics.models.yolo.detect import DetectionTrainer

    class RayDDPTrainer(DetectionTrainer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            # Ultralytics counts devices in --device; the group is Ray's, whatever the device.
            self.world_size = dist.get_world_size() if dist.is_initialized() else 1
            self.ddp = False  # never spawn Ultralytics' own launcher: this process is already a rank
            self.images_seen = 0
            # Torch's threads are sized to the CPUs Ray gave this worker by `train.size_threads`,
            # which every training (this one included) runs once Ultralytics has set up its device.

        def _setup_ddp(self) -> None:
            import ray.train.torch

            self.device = ray.train.torch.get_device()
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            if (backend := device_backend(self.device)) is not None:
                self.accelerator = backend

        def _setup_train(self) -> None:
            with ddp_without_device_ids(cpu=self.device.type == "cpu"):
                super()._setup_train()

        def preprocess_batch(self, batch: dict) -> dict:
            self.images_seen += len(batch["img"])
            return super().preprocess_batch(batch)

        def validate(self):
            metrics, fitness = super().validate()
            if metrics is not None and fitness is not None and fitness == self.best_fitness:
                self.best_metrics = dict(metrics)  # the epoch that best.pt holds
            return metrics, fitness

        def final_eval(self) -> None:
            # Ultralytics validates best.pt again here, on every rank and on CUDA only. Its
            # metrics are those of the epoch that saved it, which all ranks validated
            # together (each its shard, gathered on rank 0), so keep those instead.
            strip_checkpoints(self.last, self.best, rank=dist.get_rank())
            dist.barrier()
            if getattr(self, "best_metrics", None):
                self.metrics = dict(self.best_metrics)

    return RayDDPTrainer


def device_backend(device):
    """Ultralytics' accelerator backend for `device`; None on versions without them."""
    try:
        from ultralytics.utils.torch_utils import get_torch_device_backend
    except ImportError:
        return None
    return get_torch_device_backend(device)


@contextlib.contextmanager
def ddp_without_device_ids(cpu: bool) -> Iterator[None]:
    """While `_setup_train` wraps the model: on CPU, DistributedDataParallel without the
    `device_ids=[device.index]` that Ultralytics passes and a CPU module refuses."""
    from torch.nn import parallel

    original = parallel.DistributedDataParallel

    class DDP(original):
        def __init__(self, module, device_ids=None, **kwargs) -> None:
            super().__init__(module, device_ids=None if cpu else device_ids, **kwargs)

    parallel.DistributedDataParallel = DDP
    try:
        yield
    finally:
        parallel.DistributedDataParallel = original


def strip_checkpoints(last: Path, best: Path, rank: int) -> None:
    """What Ultralytics' final_eval does to the checkpoints, once (on rank 0): drop the optimizer,
    and give best.pt the run's results."""
    from ultralytics.utils.torch_utils import strip_optimizer

    if rank == 0 and last.exists():
        ckpt = strip_optimizer(last)
        if best.exists():
            strip_optimizer(best, updates={"train_results": ckpt.get("train_results")})


def keep_image_predictions(model) -> list[dict[str, Any]]:
    """A list that fills, during `model.val()`, with each image's matched predictions.

    Ultralytics' validator matches every prediction to the ground truth at the ten IoU
    thresholds and keeps the result per image, but only until it has computed its totals;
    this copies each image's entry as it is made.
    """
    images: list[dict[str, Any]] = []

    def wrap(validator) -> None:
        metrics = validator.metrics
        if getattr(metrics, "_facemask_kept", False):
            return
        update = metrics.update_stats

        def update_stats(stat: dict[str, Any]) -> None:
            images.append(
                {
                    "name": stat["im_name"],
                    "tp": stat["tp"],
                    "conf": stat["conf"],
                    "pred_cls": stat["pred_cls"],
                    "target_cls": stat["target_cls"],
                }
            )
            update(stat)

        metrics.update_stats, metrics._facemask_kept = update_stats, True

    model.add_callback("on_val_batch_start", wrap)
    return images


class _Detections:
    """The Results-like view ByteTrack reads: xywh, conf and cls arrays, boolean-indexable."""

    def __init__(self, xywh: np.ndarray, conf: np.ndarray, cls: np.ndarray) -> None:
        self.xywh, self.conf, self.cls = xywh, conf, cls

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index) -> "_Detections":
        return _Detections(self.xywh[index], self.conf[index], self.cls[index])


def tracker_settings(frame_rate: float) -> SimpleNamespace:
    """ByteTrack's defaults (Ultralytics' bytetrack.yaml), with a lost face kept for `frame_rate`
    updates: a second when every frame is processed."""
    return SimpleNamespace(
        tracker_type="bytetrack",
        track_high_thresh=0.25,
        track_low_thresh=0.1,
        new_track_thresh=0.25,
        track_buffer=max(1, round(frame_rate)),
        match_thresh=0.8,
        fuse_score=True,
    )


class ByteTracker:
    """Ultralytics' ByteTrack on plain arrays: `update(xywh, conf, cls)` returns one row per
    confirmed track, [x1, y1, x2, y2, track_id, score, cls, index of the detection]."""

    def __init__(self, frame_rate: float) -> None:
        from ultralytics.trackers.byte_tracker import BYTETracker

        self.tracker = BYTETracker(tracker_settings(frame_rate))

    def update(self, xywh: np.ndarray, conf: np.ndarray, cls: np.ndarray) -> np.ndarray:
        return self.tracker.update(_Detections(xywh, conf, cls))

    def set_frame_rate(self, frame_rate: float) -> None:
        """Keep a lost track for `frame_rate` updates from now on (a second at that rate).
        BYTETracker fixes the frames a lost track is kept from its settings when built, and reads
        the attribute on every update."""
        setattr(self.tracker, lost_frames_attribute(self.tracker), max(1, round(frame_rate)))


def lost_frames_attribute(tracker) -> str:
    """The name BYTETracker gives the frames a lost track is kept; loud if neither is there."""
    for name in ("max_frames_lost", "max_time_lost"):
        if hasattr(tracker, name):
            return name
    raise RuntimeError(f"ultralytics {VERSION}: BYTETracker has neither max_frames_lost nor max_time_lost")


def with_class_count(yolo, classes: int):
    """`yolo` (a `YOLO`) holding its architecture rebuilt with a `classes`-class head and fresh
    weights, ready to export: what a training on `classes` classes makes of it."""
    from ultralytics.nn.tasks import DetectionModel

    built = DetectionModel(dict(yolo.model.yaml), nc=classes, verbose=False)
    built.args, built.task = yolo.model.args, "detect"  # export reads both from the model it holds
    yolo.model = built
    return yolo
