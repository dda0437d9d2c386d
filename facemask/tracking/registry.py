"""The MLflow model registry: register a version, look one up, download its weights, move aliases.

Model URIs and `ModelInfo` are defined in `facemask.core.modelref`; this module only talks to MLflow.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from facemask import __version__
from facemask.core.errors import ModelNotFoundError, TrackingUnavailableError
from facemask.core.modelref import (
    ENSEMBLE_FILE,
    ONNX_TAG,
    OPERATING_POINT_TAG,
    REGISTERED_MODEL,
    ModelInfo,
    find_weights,
    parse_models_uri,
)
from facemask.tracking.model_cache import cached_download
from facemask.tracking.runs import client, using_tracking_uri

# The pyfunc wrapper logged with every version (MLflow's models-from-code).
PYFUNC_MODULE = Path(__file__).resolve().parents[1] / "detection" / "pyfunc.py"


def log_and_register(
    run_id: str,
    weights: Path,
    tags: dict[str, Any],
    tracking_uri: str,
    name: str = REGISTERED_MODEL,
) -> str:
    """Log `weights` as a pyfunc MLflow model of run `run_id` and register a new version.

    Returns the new version number. The version is tagged with `tags` (metrics, data
    fingerprint) so promotion and serving never need the run itself.
    """
    import mlflow

    with using_tracking_uri(tracking_uri):
        # Resuming the run is the only way to attach a logged model to it; the caller ends it.
        with mlflow.start_run(run_id=run_id):
            logged = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_MODULE),
                artifacts={"weights": str(weights)},
                pip_requirements=[f"facemask=={__version__}", "ultralytics", "torch", "pillow", "pandas"],
                signature=_pyfunc_signature(),
            )
        version = mlflow.register_model(logged.model_uri, name, tags={k: str(v) for k, v in tags.items()})
    c = client(tracking_uri)
    c.set_model_version_tag(name, version.version, "run_id", run_id)
    return str(version.version)


def _pyfunc_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema(
            [
                ColSpec("long", "image"),
                ColSpec("string", "label"),
                ColSpec("long", "class_id"),
                ColSpec("double", "confidence"),
                ColSpec("double", "x1"),
                ColSpec("double", "y1"),
                ColSpec("double", "x2"),
                ColSpec("double", "y2"),
            ]
        ),
        params=ParamSchema([ParamSpec("conf", "double", 0.25)]),
    )


# MLflow's error codes for a name, version or alias the registry does not hold; any other
# failure (a server down, a timeout, a database locked) is the registry being unavailable.
MISSING_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def is_missing(exc: BaseException) -> bool:
    """Whether an MLflow error says the thing asked for does not exist (not that it could not look)."""
    return getattr(exc, "error_code", None) in MISSING_CODES


def model_version(model_uri: str, tracking_uri: str):
    """The registry ModelVersion a `models:/` URI points to; ModelNotFoundError naming what is
    missing, or TrackingUnavailableError when the registry could not be asked."""
    name, version, alias = parse_models_uri(model_uri)
    c = client(tracking_uri)
    try:
        c.get_registered_model(name)
    except Exception as exc:
        if not is_missing(exc):
            raise TrackingUnavailableError(f"{model_uri}: the registry did not answer ({type(exc).__name__})") from exc
        raise ModelNotFoundError(
            f"{model_uri}: no registered model {name!r} at {tracking_uri}; "
            "train with --register first, or set MLFLOW_TRACKING_URI"
        ) from None
    try:
        return c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    except Exception as exc:
        if not is_missing(exc):
            raise TrackingUnavailableError(f"{model_uri}: the registry did not answer ({type(exc).__name__})") from exc
        versions = sorted(int(v.version) for v in c.search_model_versions(f"name='{name}'"))
        what = f"alias {alias!r}" if alias else f"version {version}"
        hint = "promote one with `facemask promote`" if alias else "pick an existing version"
        raise ModelNotFoundError(
            f"{model_uri}: {name!r} has no {what} (versions: {versions or 'none'}); {hint}"
        ) from None


def version_metrics(mv) -> dict[str, float]:
    out = {}
    for key, value in (mv.tags or {}).items():
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


def check_model_reference(model_uri: str, tracking_uri: str, backend: str = "pt") -> None:
    """ModelNotFoundError unless a `models:/` or `runs:/` URI names something loadable, from the
    registry's and the run's metadata alone: nothing is downloaded (each replica downloads it)."""
    if model_uri.startswith("models:/"):
        mv = model_version(model_uri, tracking_uri)
        if backend == "onnx" and not (mv.tags or {}).get(ONNX_TAG):
            raise ModelNotFoundError(
                f"{model_uri}: version {mv.version} has no ONNX export; run `facemask export --model-uri {model_uri}`"
            )
        return
    run_id, _, path = model_uri[len("runs:/") :].partition("/")
    try:
        listed = client(tracking_uri).list_artifacts(run_id, path or None)
    except Exception as exc:
        raise ModelNotFoundError(f"{model_uri}: no such run or artifact at {tracking_uri} ({exc})") from None
    if not listed and not path.endswith((".pt", ".onnx")):
        raise ModelNotFoundError(f"{model_uri}: nothing logged there; check the run id and the path")


def fetch_model(model_uri: str, tracking_uri: str, backend: str = "pt") -> ModelInfo:
    """Download what a `models:/` or `runs:/` URI names (once per machine: `model_cache`); return a
    detector ModelInfo.

    backend "onnx" downloads the version's ONNX export (the `onnx_artifact` tag `facemask export` sets).
    """
    import mlflow

    name = version = run_id = point = None
    metrics: dict[str, float] = {}
    source = model_uri
    if model_uri.startswith("models:/"):
        mv = model_version(model_uri, tracking_uri)
        name, version, run_id = mv.name, str(mv.version), mv.run_id
        metrics = version_metrics(mv)
        point = (mv.tags or {}).get(OPERATING_POINT_TAG)
        source = f"models:/{name}/{version}"
        if backend == "onnx":
            source = (mv.tags or {}).get(ONNX_TAG)
            if not source:
                raise ModelNotFoundError(
                    f"{model_uri}: version {version} has no ONNX export; run `facemask export --model-uri {model_uri}`"
                )
        # A version number is reused on another server or after a delete; its run and source are not.
        key = f"{tracking_uri}|{name}|{version}|{run_id}|{mv.source}|{source}"
    else:
        run_id = model_uri[len("runs:/") :].split("/", 1)[0]
        key = f"{tracking_uri}|{model_uri}"

    def download(folder: Path) -> None:
        with using_tracking_uri(tracking_uri):
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(folder))

    try:
        local = cached_download(key, download)
    except Exception as exc:
        raise ModelNotFoundError(f"{model_uri}: could not download its artifacts from {tracking_uri} ({exc})") from None
    weights = find_weights(local, prefer=f".{backend}")
    if weights.suffix != f".{backend}" and weights.name != ENSEMBLE_FILE:
        raise ModelNotFoundError(
            f"{model_uri}: no .{backend} weights in {source}; for ONNX run `facemask export` first"
        )
    return ModelInfo(
        uri=model_uri, weights=str(weights), name=name, version=version, run_id=run_id, metrics=metrics, point=point
    )


def set_version_tags(name: str, version: str, tags: dict[str, Any], tracking_uri: str) -> None:
    c = client(tracking_uri)
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, str(value))


def alias_version(name: str, alias: str, tracking_uri: str):
    """The version holding `alias`, or None."""
    try:
        return client(tracking_uri).get_model_version_by_alias(name, alias)
    except Exception:
        return None


def set_alias(name: str, alias: str, version: str, tracking_uri: str) -> None:
    client(tracking_uri).set_registered_model_alias(name, alias, version)


def aliases_and_tags(name: str, tracking_uri: str) -> tuple[dict[str, str], dict[str, str]]:
    """A registered model's aliases (alias -> version) and its own tags, in one registry call;
    ModelNotFoundError when there is no such model."""
    try:
        registered = client(tracking_uri).get_registered_model(name)
    except Exception as exc:
        raise ModelNotFoundError(f"no registered model {name!r} in {tracking_uri} ({type(exc).__name__})") from None
    aliases = {alias: str(version) for alias, version in (registered.aliases or {}).items()}
    return aliases, dict(registered.tags or {})


def set_model_tag(name: str, key: str, value: str | None, tracking_uri: str) -> None:
    """Set a registered model's tag, or delete it when `value` is None."""
    c = client(tracking_uri)
    if value is None:
        with contextlib.suppress(Exception):  # already absent
            c.delete_registered_model_tag(name, key)
    else:
        c.set_registered_model_tag(name, key, value)


def delete_alias(name: str, alias: str, tracking_uri: str) -> None:
    with contextlib.suppress(Exception):  # already absent
        client(tracking_uri).delete_registered_model_alias(name, alias)


def list_versions(name: str, tracking_uri: str, with_tags: bool = False) -> list[dict[str, Any]]:
    """Every registered version with its aliases and metric tags (and with_tags, all its tags: not
    for the endpoint's GET /models), newest first; none for a name the registry does not hold,
    TrackingUnavailableError when it could not be asked."""
    c = client(tracking_uri)
    try:
        versions = c.search_model_versions(f"name='{name}'")
    except Exception as exc:
        if is_missing(exc):
            return []
        raise TrackingUnavailableError(f"{name}: the registry did not answer ({type(exc).__name__})") from exc
    # Searches leave ModelVersion.aliases empty; the registered model has the alias map.
    aliases: dict[str, list[str]] = {}
    with contextlib.suppress(Exception):
        for alias, version in aliases_and_tags(name, tracking_uri)[0].items():
            aliases.setdefault(version, []).append(alias)
    out = []
    for mv in sorted(versions, key=lambda v: -int(v.version)):
        out.append(
            {
                "name": mv.name,
                "version": str(mv.version),
                "run_id": mv.run_id,
                "aliases": sorted(aliases.get(str(mv.version), [])),
                "metrics": version_metrics(mv),
            }
            | ({"tags": dict(mv.tags or {})} if with_tags else {})
        )
    return out
