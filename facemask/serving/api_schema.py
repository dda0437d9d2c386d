"""The HTTP API's schema: answers, errors and their OpenAPI descriptions.

Pure data: the serving deployments and the request checks both use it, and the OpenAPI
document (`/docs`) is built from it.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from facemask.core.classes import CLASS_NAMES

MULTIPLEX_HEADER = "serve_multiplexed_model_id"
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "MPO")


class APIError(Exception):
    """A request the API refuses: answered as `{error, message}` with `status` (never a 500)."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class DetectionOut(BaseModel):
    label: str = Field(description=" | ".join(CLASS_NAMES))
    class_id: int
    confidence: float
    box: Box = Field(description="Corners in source-image pixels")


class ImageSize(BaseModel):
    width: int
    height: int


class OperatingPointOut(BaseModel):
    imgsz: int = Field(description="The size the model answers at unless a request gives imgsz")
    conf: dict[str, float] = Field(description="Per class, the threshold used unless a request gives conf")
    chosen_on: str = Field(description="The split it was chosen on")
    rule: str = Field(description="f1 (best F1 per class) or precision>=P")


class ModelRef(BaseModel):
    name: str | None
    version: str | None
    run_id: str | None
    uri: str
    backend: str
    operating_point: OperatingPointOut | None = Field(
        None, description="The version's operating point (facemask calibrate); absent: conf 0.25 at 640"
    )


class Timings(BaseModel):
    decode_ms: float = Field(description="Reading the body and decoding the image")
    queue_ms: float = Field(description="Waiting for a batch to form and a model call to start")
    inference_ms: float = Field(description="The model call of the batch this request was in")
    total_ms: float = Field(description="From the replica receiving the request to the answer")
    batch_size: int = Field(description="Requests served by that one model call")


class PredictResponse(BaseModel):
    detections: list[DetectionOut]
    counts: dict[str, int] = Field(description="Detections per class; every class present")
    image: ImageSize
    model: ModelRef
    timings: Timings


class ErrorResponse(BaseModel):
    error: str = Field(description="A stable code, e.g. not_an_image, body_too_large")
    message: str = Field(description="What was wrong and how to fix it")


class ModelInfoResponse(BaseModel):
    name: str | None
    version: str | None
    run_id: str | None
    uri: str
    backend: str
    device: str
    classes: list[str]
    metrics: dict[str, float]
    operating_point: OperatingPointOut | None = None


class VersionInfo(BaseModel):
    name: str
    version: str
    run_id: str | None
    aliases: list[str]
    metrics: dict[str, float]


class ModelsResponse(BaseModel):
    default: str = Field(description="The model served without a serve_multiplexed_model_id header")
    versions: list[VersionInfo]
    registry_error: str | None = None


ERRORS = {
    400: {
        "model": ErrorResponse,
        "description": "Empty body, not an image, truncated or zero-size image, bad model id",
    },
    401: {"model": ErrorResponse, "description": "FACEMASK_API_KEY is set and the bearer token is missing or wrong"},
    404: {"model": ErrorResponse, "description": "The requested model version or alias does not exist"},
    413: {"model": ErrorResponse, "description": "Body over max_body_mb, or image over max_pixels"},
    415: {"model": ErrorResponse, "description": "An image format other than " + ", ".join(SUPPORTED_FORMATS)},
    422: {"model": ErrorResponse, "description": "A query parameter out of range"},
    503: {"model": ErrorResponse, "description": "Overloaded: retry after the Retry-After seconds"},
}

IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            },
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
