"""What a model costs to run: its batch-1 latency on a named target, for a study's cost objective.

A trial's latency depends on its architecture (the model's scale) and its input size, not on
what it learnt, so a study measures each (model, size) in its search space once, in the driver,
before the first trial trains: no trial is slowed, and no measurement runs beside a training
that would take the core from it. Trials then report the measured figure as `latency_ms`.

Targets (TARGETS):
- `cpu-onnx`: the architecture exported to ONNX at the size (static shape, 3 classes), run by
  onnxruntime on one intra-op thread without spinning, with the measuring thread pinned to one
  core; the median of RUNS timed runs after WARMUP. What a small box beside a door camera runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import ConfigError

log = logging.getLogger("facemask.training.cost")
TARGETS = ("cpu-onnx",)
WARMUP, RUNS = 3, 20
LATENCY = "latency_ms"  # the cost objective's name, as trials report it


@dataclass(frozen=True)
class Latency:
    """One measurement: the median and 90th percentile of `runs` batch-1 calls, in milliseconds."""

    model: str
    imgsz: int
    target: str
    median_ms: float
    p90_ms: float
    runs: int
    measure_s: float  # wall seconds the measurement took, export included

    @property
    def fps(self) -> float:
        return 1000.0 / self.median_ms

    def as_dict(self) -> dict:
        return asdict(self) | {"fps": round(self.fps, 1)}


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ConfigError(f"--latency-target {target!r}: unknown target; choose one of {', '.join(TARGETS)}")
    return target


def cost_key(model: str, imgsz: int) -> str:
    """How a trial finds its figure in the study's table (a JSON object's key)."""
    return f"{model}@{int(imgsz)}"


def measure_latency(model: str, imgsz: int, target: str = "cpu-onnx") -> Latency:
    """Export `model`'s architecture (a yaml or .pt source) at `imgsz` and time batch-1 calls on `target`."""
    check_target(target)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="facemask-latency-") as tmp:
        onnx_path = _export_architecture(model, imgsz, Path(tmp))
        times = _time_onnx(onnx_path, imgsz)
    return Latency(
        model,
        int(imgsz),
        target,
        round(statistics.median(times), 3),
        round(statistics.quantiles(times, n=10)[-1], 3),
        len(times),
        round(time.perf_counter() - started, 2),
    )


def _export_architecture(model: str, imgsz: int, folder: Path) -> Path:
    """The architecture of `model` with a 3-class head (what a facemask training makes of it), as ONNX."""
    from facemask.core.runtime import ultralytics_env
    from facemask.training.train import resolve_model_source

    ultralytics_env()
    from ultralytics import YOLO

    from facemask.compat.ultralytics import with_class_count

    # Weights do not change the cost; the head's class count does, slightly: build it as trained.
    yolo = with_class_count(YOLO(resolve_model_source(model), task="detect"), len(CLASS_NAMES))
    # Saved first: Ultralytics writes an export beside its source (a .yaml's in the working
    # directory, a .pt's in its folder), and this one belongs in `folder`, nowhere of the user's.
    saved = folder / "model.pt"
    yolo.save(saved)
    options = {"format": "onnx", "imgsz": int(imgsz), "dynamic": False, "simplify": False, "device": "cpu"}
    with contextlib.redirect_stdout(sys.stderr):  # Ultralytics prints its export report
        exported = Path(YOLO(str(saved), task="detect").export(**options))
    if exported.parent.resolve() != folder.resolve():
        raise RuntimeError(f"the latency export went to {exported}, not {folder}")
    return exported


def _time_onnx(path: Path, imgsz: int) -> list[float]:
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.zeros((1, 3, int(imgsz), int(imgsz)), np.float32)}
    allowed = os.sched_getaffinity(0)
    # Pinned: the thread stays on one core for the whole measurement (only this thread: 0 is the caller).
    os.sched_setaffinity(0, {max(allowed)})
    try:
        for _ in range(WARMUP):
            session.run(None, feed)
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - start) * 1000.0)
    finally:
        os.sched_setaffinity(0, allowed)
    return times


def cost_table(combinations: list[tuple[str, int]], target: str) -> dict[str, Latency]:
    """Each (model, size) measured once, in the order given."""
    table = {}
    for model, imgsz in combinations:
        key = cost_key(model, imgsz)
        if key not in table:
            table[key] = measure_latency(model, imgsz, target)
            log.info("%s on %s: %.1f ms a frame (%.0f fps)", key, target, table[key].median_ms, table[key].fps)
    return table
