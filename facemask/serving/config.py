"""The Serve application's arguments: what `serve run serve.app:app key=value ...`, serve/config.yaml's
`args` and `facemask serve` give it. Defaults come from `ServeConfig`, the one place they are written."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from facemask.settings import ServeConfig

_DEFAULT = ServeConfig()


class AppArgs(BaseModel):
    """What `serve run serve.app:app key=value ...` and serve/config.yaml's `args` accept."""

    model_config = {"extra": "forbid"}

    model_uri: str = Field(
        _DEFAULT.model_uri, description="models:/NAME@ALIAS, models:/NAME/N, runs:/..., or a local .pt/.onnx"
    )
    backend: str = Field(
        _DEFAULT.backend,
        pattern="^(pt|onnx|simulated-gpu)$",
        description="pt (PyTorch), onnx (onnxruntime, CPU), or simulated-gpu (capacity tests only: no model, "
        "a GPU's batch latency, a fixed pattern of boxes)",
    )
    simulated_latency: str = Field(
        _DEFAULT.simulated_latency,
        description="simulated-gpu: BATCH:MS pairs, the call time of each batch size (interpolated between)",
    )
    device: str = Field(_DEFAULT.device, description="auto (the GPU if the replica has one), cpu, or a GPU index")
    tracking_uri: str | None = Field(None, description="MLflow server of the registry; default MLFLOW_TRACKING_URI")
    max_body_mb: float = Field(_DEFAULT.max_body_mb, gt=0, description="Larger bodies get 413")
    body_timeout_s: float = Field(
        _DEFAULT.body_timeout_s, gt=0, description="A body not all arrived after this gets 408"
    )
    max_pixels: int = Field(_DEFAULT.max_pixels, gt=0, description="Larger images (decompression bombs) get 413")
    decode_budget_mp: float = Field(
        _DEFAULT.decode_budget_mp,
        gt=0,
        description="Megapixels a replica holds decoded "
        "at once; more requests wait for their share (bounds memory under large images)",
    )
    refresh_s: float = Field(
        _DEFAULT.refresh_s,
        ge=0,
        description="How often an alias (the default @champion, or one named in "
        "the header) is looked up again, so a promotion is served without a redeploy; 0: never",
    )
    max_pending: int = Field(
        _DEFAULT.max_pending,
        ge=1,
        description="Requests a replica holds (reading, decoding, "
        "waiting for or in the model); more get a JSON 503 with Retry-After at once",
    )
    max_batch_size: int = Field(_DEFAULT.max_batch_size, ge=1, le=256)
    batch_wait_timeout_s: float = Field(
        _DEFAULT.batch_wait_timeout_s,
        ge=0,
        le=1,
        description="The longest a batch waits for requests already inside the replica (decoding) to join it; "
        "with none on their way it starts at once",
    )
    threads: int | None = Field(
        _DEFAULT.threads,
        ge=1,
        description="CPU inference threads per detector replica (torch or onnxruntime); "
        "default: torch's under Ray (the replica's num_cpus), all cores for onnxruntime",
    )
    require_api_key: bool = Field(
        _DEFAULT.require_api_key,
        description="Refuse to start a replica that has no FACEMASK_API_KEY (from where the app is built, or "
        "its own environment) or has a placeholder: a deployment meant to be protected never serves open",
    )
    # Replica count, resources and queue limits of the deployment: serve/config.yaml sets them
    # (its `deployments:` entry wins), `facemask serve` and `build_app` pass them here.
    deployment_options: dict[str, Any] = Field(default_factory=dict)
