"""What names a model and where its weights came from: URIs, registry names and `ModelInfo`.

A leaf: the registry (tracking), the detector, evaluation and serving all speak these
types, so they live apart from any of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facemask.core.errors import ConfigError, ModelNotFoundError

REGISTERED_MODEL = "facemask-detector"
DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL}@champion"
# Version tag holding the runs:/ URI of a version's ONNX export.
ONNX_TAG = "onnx_artifact"
# Version tag holding the version's operating point (facemask.core.operating_point), chosen on val.
OPERATING_POINT_TAG = "facemask.core.operating_point"
BACKENDS = ("pt", "onnx")
# In a registered version's folder: the members of a weighted-box-fusion ensemble (facemask ensemble).
ENSEMBLE_FILE = "ensemble.json"


@dataclass(frozen=True)
class ModelInfo:
    """Where a loaded model came from: enough to trace any prediction back to its run."""

    uri: str
    weights: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    # The version's operating point as its tag holds it (JSON); None: answer at the defaults.
    point: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self, backend: str) -> dict[str, Any]:
        """What an answer or a summary file says of the model: where it came from, and how it runs."""
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "uri": self.uri, "backend": backend}


def parse_models_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` or `models:/name/3` to (name, version, alias)."""
    if not model_uri.startswith("models:/"):
        raise ModelNotFoundError(f"{model_uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    body = model_uri[len("models:/") :]
    if "@" in body:
        name, alias = body.split("@", 1)
        if name and alias:
            return name, None, alias
    else:
        name, _, version = body.partition("/")
        if name and version.isdigit():
            return name, version, None
    raise ModelNotFoundError(f"{model_uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")


def model_uri_for(model_id: str, default_uri: str) -> str:
    """A header value (`3`, `champion`) to a registry URI of the default model's registered name."""
    name = parse_models_uri(default_uri)[0] if default_uri.startswith("models:/") else REGISTERED_MODEL
    return f"models:/{name}/{model_id}" if model_id.isdigit() else f"models:/{name}@{model_id}"


def find_weights(folder: Path, prefer: str = ".pt") -> Path:
    """The weights file inside a downloaded MLflow model folder (or any folder); best.* wins.
    An ensemble's folder holds its members' weights and ENSEMBLE_FILE, which is what names it."""
    ensemble = sorted(folder.rglob(ENSEMBLE_FILE))
    if ensemble and prefer == ".pt":
        return ensemble[0]
    candidates = sorted(folder.rglob(f"*{prefer}")) or sorted(folder.rglob("*.pt")) or sorted(folder.rglob("*.onnx"))
    if not candidates:
        raise ModelNotFoundError(f"{folder}: no .pt or .onnx weights inside")
    best = [c for c in candidates if c.stem == "best"]
    return (best or candidates)[0]


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: expected pt or onnx")
    return backend
