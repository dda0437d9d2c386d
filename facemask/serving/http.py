"""The HTTP surface the replica's routes share: the FastAPI app and its error shape, the API key
check, the OpenAPI of the prediction routes, the page and the annotated image."""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations (`Request`,
# `WebSocket`, `Depends`) as objects; as strings, Serve's ingress cannot resolve them.
import io

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from facemask import __version__
from facemask.core.settings import INFERENCE, INFERENCE_BOUNDS
from facemask.data.drawing import draw_boxes
from facemask.serving.api_schema import IMAGE_BODY, MULTIPLEX_HEADER, APIError
from facemask.serving.metrics import RequestMetrics
from facemask.serving.pages import web_page
from facemask.serving.request_checks import key_matches

api = FastAPI(
    title="facemask",
    version=__version__,
    description="Face-mask detection (YOLO26): with_mask, without_mask, mask_weared_incorrect. "
    f"Send `{MULTIPLEX_HEADER}: <version or alias>` to pick a registered model.",
)
api.add_middleware(RequestMetrics)
bearer = HTTPBearer(auto_error=False, description="Required when the server has FACEMASK_API_KEY set")


@api.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse({"error": exc.error, "message": exc.message}, status_code=exc.status, headers=exc.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown routes and methods answer in the API's one error shape too."""
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {
        404: f"no route {request.url.path}; see /docs",
        405: f"{request.method} is not allowed on {request.url.path}; see /docs",
    }.get(exc.status_code, str(exc.detail))
    return JSONResponse(
        {"error": codes.get(exc.status_code, "http_error"), "message": message},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"error": "invalid_parameter", "message": problems}, status_code=422)


async def require_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    """The API key check of protected routes, as a dependency.

    FastAPI runs dependencies before it validates query parameters, so a caller without the
    key gets 401 and learns nothing about the parameters (422 would come first otherwise).
    """
    check_key(request, credentials.credentials if credentials else None)


def check_key(request: Request, given: str | None) -> None:
    if not key_matches(getattr(request.app.state, "api_key", None), given):
        raise APIError(
            401,
            "unauthorized",
            "send the API key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, as HTTPBearer reads it; None without one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def predict_openapi(description: str) -> dict:
    """What the prediction routes declare: the image body, the query parameters and the key.

    They read all three themselves (`check_key`, `inference_query`) instead of through
    FastAPI's parameter solving, the hot path's largest cost of our own; this says the same in
    the schema. Parameters, defaults and bounds come from `settings.INFERENCE(_BOUNDS)`.
    """
    descriptions = {
        "conf": "Minimum confidence, for every class (default: the version's per-class thresholds, else 0.25)",
        "iou": "IoU threshold of duplicate suppression",
        "imgsz": "Inference size in pixels, rounded to a multiple of 32 (default: the version's, else 640)",
        "max_det": "Most detections returned",
    }
    parameters = []
    for name, text in descriptions.items():
        default, (low, high) = getattr(INFERENCE, name), INFERENCE_BOUNDS[name]
        kind = "integer" if isinstance(default, int) else "number"
        schema = {"type": kind, "minimum": low, "maximum": high}
        if name not in ("conf", "imgsz"):  # those two default to the version's operating point
            schema["default"] = default
        parameters.append({"name": name, "in": "query", "required": False, "description": text, "schema": schema})
    return {
        "requestBody": IMAGE_BODY,
        "parameters": parameters,
        "security": [{bearer.scheme_name: []}],
        "description": description,
    }


def page_html() -> str:
    return web_page("index.html").replace("{{HEADER}}", MULTIPLEX_HEADER)


def annotated_jpeg(image, boxes: list[tuple]) -> bytes:
    """The image with its boxes drawn, as JPEG bytes."""
    buffer = io.BytesIO()
    draw_boxes(image, boxes).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
