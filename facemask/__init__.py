"""facemask: train, tune, track and serve a face-mask detector on Ray.

One package per stage of the flow, each importing only the ones above it
(tests/unit/project/test_architecture.py checks the order; docs/layout.md lists every module):

    core, compat   the leaves: classes, errors, settings, runtime, stop signals; dependencies' private parts
    data           readers (VOC, YOLO, COCO), split, copy-paste, YOLO output, the Ray Data pipeline
    tracking       everything that talks to MLflow
    detection      a model as a detector: loading, typed detections, fusion, ONNX export, the pyfunc
    quality        scoring with intervals, evaluation, the operating point, ensembles, the gate, rollouts
    training       one training, N Ray Train workers, the Tune study
    serving        the Ray Serve application, its guards, /live, the client
    video          many cameras (`facemask watch`), predictions over folders, videos and streams
    cli            the `facemask` command

Nothing here runs at import but one thing: the module paths of the flat layout before these
packages (`facemask.train`, `facemask.live.tracker`, ...) still import, as the new module,
with a DeprecationWarning, for one release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any, Callable

__version__ = "0.1.0"

# The flat layout's module paths and where each module is now. Removed in the next release.
MOVED = {
    **{name: f"core.{name}" for name in ("classes", "errors", "modelref", "lifecycle", "runtime", "settings")},
    **{name: f"core.{name}" for name in ("manifest", "operating_point")},
    **{name: f"data.{name}" for name in ("records", "voc", "yolo_folder", "coco", "sources", "synth", "split")},
    **{name: f"data.{name}" for name in ("augment", "convert", "pipeline", "sampling", "drawing", "plots")},
    **{name: f"detection.{name}" for name in ("detector", "export", "fusion")},
    "mlflow_model": "detection.pyfunc",
    **{name: f"quality.{name}" for name in ("scoring", "bootstrap", "evaluate", "calibrate", "ensemble")},
    **{name: f"quality.{name}" for name in ("promotion", "rollout")},
    **{name: f"training.{name}" for name in ("train", "distributed", "tune")},
    **{"tune_space": "training.space", "tune_resources": "training.resources", "tune_finish": "training.finish"},
    **{name: f"serving.{name}" for name in ("batching", "request_checks", "api_schema", "proxy_guard")},
    **{name: f"serving.{name}" for name in ("haproxy_guard", "simulated_gpu", "client")},
    "batch_predict": "video.batch",
    "live.streams": "video.streams",
    "live": "serving.live",
    "watch": "video.watch",
}
# Longest first, so `live.streams` wins over `live`. Sorted once: the finder below sees every import.
_OLD_FIRST = sorted(MOVED, key=len, reverse=True)


def moved_to(name: str) -> str | None:
    """The module an old `facemask.` path names now (`facemask.live.tracker` -> `facemask.serving.live.tracker`)."""
    relative = name.removeprefix(f"{__name__}.")
    if relative == name:
        return None
    for old in _OLD_FIRST:
        if relative == old or relative.startswith(f"{old}."):
            return f"{__name__}.{MOVED[old]}{relative[len(old) :]}"
    return None


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old path as the module now at the new one: the same object, so a patch made
    through either name is seen by both. Warns once per old path."""

    def __init__(self) -> None:
        self._real_specs: dict[str, Any] = {}  # old name -> the module's own spec, create to exec

    def find_spec(self, name: str, path: Any = None, target: Any = None):
        target_name = moved_to(name)
        if target_name is None or importlib.util.find_spec(target_name) is None:
            return None
        return importlib.util.spec_from_loader(name, self, is_package=False)

    def create_module(self, spec):
        new = moved_to(spec.name)
        warnings.warn(
            f"{spec.name} is now {new}; the old path will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new)
        self._real_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # importlib set the old name's spec on the module: give it back its own. Keyed by the old
        # name, since two threads may import two old paths at once.
        module.__spec__ = self._real_specs.pop(module.__spec__.name)


# First in line: after `facemask.live` is imported as `facemask.serving.live`, Python's own finder
# would load `facemask.live.tracker` from that package's folder a second time, as another module.
if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())


def public_parts(package: str, parts: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """A package's `__getattr__` and `__all__` for its public names (name -> the submodule
    defining it), imported on first use, so importing the package does no work."""

    def __getattr__(name: str) -> Any:
        if name in parts:
            return getattr(importlib.import_module(f"{package}.{parts[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(parts)
