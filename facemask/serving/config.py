"""The Serve application's arguments: what `serve run serve.app:app key=value ...`, serve/config.yaml's
`args` and `facemask serve` give it. Built from `ServeConfig`'s fields marked as application
arguments (`settings.app_field`), so a default, its bounds and its description are written once."""

from __future__ import annotations

import typing
from dataclasses import fields
from typing import Any

from pydantic import BaseModel, Field, create_model

from facemask.core.settings import ServeConfig


class _Strict(BaseModel):
    model_config = {"extra": "forbid"}


def _app_arguments() -> dict[str, tuple]:
    hints = typing.get_type_hints(ServeConfig)
    out: dict[str, tuple] = {}
    for f in fields(ServeConfig):
        if "app" in f.metadata:
            out[f.name] = (hints[f.name], Field(f.default, **f.metadata["app"]))
    return out


AppArgs = create_model(
    "AppArgs",
    __base__=_Strict,
    __doc__="What `serve run serve.app:app key=value ...` and serve/config.yaml's `args` accept.",
    __module__=__name__,
    **_app_arguments(),
    tracking_uri=(str | None, Field(None, description="MLflow server of the registry; default MLFLOW_TRACKING_URI")),
    # Replica count, resources and queue limits of the deployment: serve/config.yaml sets them
    # (its `deployments:` entry wins), `facemask serve` and `build_app` pass them here.
    deployment_options=(dict[str, Any], Field(default_factory=dict)),
)
