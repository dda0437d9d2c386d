"""The Ray Serve application: a hardened FastAPI ingress in front of a batched, multiplexed detector.

    serve run serve.app:app model_uri=models:/facemask-detector@champion
    serve deploy serve/config.yaml
    facemask serve --model-uri models:/facemask-detector@champion

The ingress checks every request (API key, body size, format, pixel count, parameters) and
decodes the image once, so nothing malformed reaches the model. The detector deployment
gathers concurrent requests into one model call (`@serve.batch`) and keeps up to three
registry versions loaded per replica (`@serve.multiplexed`), chosen per request with the
`serve_multiplexed_model_id` header (a version number or an alias; default: the app's model).
"""


import asyncio
import hmac
import io
import logging
import os
import re
import struct
import time
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from ray import serve

from facemask import __version__
from facemask.classes import CLASS_NAMES

log = logging.getLogger(__name__)

DEFAULT_MODEL_URI = "models:/facemask-detector@champion"
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "MPO")
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MULTIPLEX_HEADER = "serve_multiplexed_model_id"
# Ray Serve's throughput settings: user code and router on the replica's own event loop
# (no thread hops per request) and buffered request logs. On 2 cores they raised
# small-image requests/s by about 30%. Set for our replicas; the CLI sets them for the proxy.
SERVE_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}


class AppArgs(BaseModel):
    """What `serve run serve.app:app key=value ...` and serve/config.yaml's `args` accept."""

    model_config = {"extra": "forbid"}

    model_uri: str = Field(DEFAULT_MODEL_URI, description="models:/NAME@ALIAS, models:/NAME/N, runs:/..., or a local .pt/.onnx")
    backend: str = Field("pt", pattern="^(pt|onnx)$", description="pt (PyTorch) or onnx (onnxruntime, CPU)")
    device: str = Field("auto", description="auto (the GPU if the replica has one), cpu, or a GPU index")
    tracking_uri: str | None = Field(None, description="MLflow server of the registry; default MLFLOW_TRACKING_URI")
    max_body_mb: float = Field(10.0, gt=0, description="Larger bodies get 413")
    max_pixels: int = Field(40_000_000, gt=0, description="Larger images (decompression bombs) get 413")
    refresh_s: float = Field(30.0, ge=0, description="How often an alias (the default @champion, or one named in "
                             "the header) is looked up again, so a promotion is served without a redeploy; 0: never")
    max_batch_size: int = Field(8, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1)
    threads: int | None = Field(None, ge=1, description="CPU inference threads per detector replica (torch or onnxruntime); "
                                "default: torch's under Ray (the replica's num_cpus), all cores for onnxruntime")
    # Replica counts and resources of each deployment are set in serve/config.yaml (or by `facemask serve`).
    detector_options: dict[str, Any] = Field(default_factory=dict)
    ingress_options: dict[str, Any] = Field(default_factory=dict)


class APIError(Exception):
    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers


# ---------------------------------------------------------------- API schema


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


class ModelRef(BaseModel):
    name: str | None
    version: str | None
    run_id: str | None
    uri: str
    backend: str


class Timings(BaseModel):
    decode_ms: float = Field(description="Decoding the image (detector replica)")
    queue_ms: float = Field(description="Waiting for a batch to form and a model call to start")
    inference_ms: float = Field(description="The model call of the batch this request was in")
    total_ms: float = Field(description="From the ingress receiving the request to the answer")
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
    400: {"model": ErrorResponse, "description": "Empty body, not an image, truncated or zero-size image, bad model id"},
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
            "schema": {"type": "object", "required": ["file"],
                       "properties": {"file": {"type": "string", "format": "binary"}}},
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}

api = FastAPI(
    title="facemask",
    version=__version__,
    description="Face-mask detection (YOLO26): with_mask, without_mask, mask_weared_incorrect. "
    f"Send `{MULTIPLEX_HEADER}: <version or alias>` to pick a registered model.",
)
bearer = HTTPBearer(auto_error=False, description="Required when the server has FACEMASK_API_KEY set")


@api.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse({"error": exc.error, "message": exc.message}, status_code=exc.status, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"error": "invalid_parameter", "message": problems}, status_code=422)


# ---------------------------------------------------------------- input checks


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    too_large = APIError(413, "body_too_large", f"the body is over the {limit / 1e6:g} MB limit; send a smaller image")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int) -> bytes:
    """The uploaded image: multipart field `file`, or the raw body."""
    body = await read_body(request, limit)
    if not body:
        raise APIError(400, "empty_body", "the request has no image: send it as multipart field 'file' or as the raw body")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form(max_files=1, max_fields=10)
    except Exception as exc:  # malformed multipart: several parser error types
        raise APIError(400, "bad_multipart", f"the multipart body could not be parsed ({exc})") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise APIError(400, "empty_body", "multipart upload has no file field named 'file'")
    data = await upload.read()
    if not data:
        raise APIError(400, "empty_body", f"the uploaded file {upload.filename!r} is empty")
    return data


def decode_image(data: bytes, max_pixels: int):
    """Bytes to an RGB PIL image, or an APIError saying exactly what is wrong with them."""
    return load_rgb(inspect_image(data, max_pixels))


def inspect_image(data: bytes, max_pixels: int):
    """Check format, size and pixel count from the header alone (cheap); the pixels are not decoded yet."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise APIError(413, "too_many_pixels", f"the image has more than {max_pixels} pixels; downscale it") from None
    except Exception:  # Ultralytics patches Image.open, which then raises other types than PIL's
        width, height = declared_size(data)
        if width == 0 or height == 0:
            raise APIError(400, "zero_size_image", f"the image header declares {width}x{height} pixels") from None
        raise APIError(400, "not_an_image", "the body is not an image Pillow can read (send JPEG, PNG, WebP or BMP)") from None
    if image.format not in SUPPORTED_FORMATS:
        raise APIError(415, "unsupported_format",
                       f"{image.format} images are not supported; send one of {', '.join(SUPPORTED_FORMATS)}")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise APIError(400, "zero_size_image", f"the image is {width}x{height} pixels")
    if width * height > max_pixels:
        raise APIError(413, "too_many_pixels",
                       f"the image is {width}x{height} = {width * height} pixels, over the {max_pixels} limit; downscale it")
    return image


def load_rgb(image):
    """Decode an inspected image; a truncated or corrupt body is an APIError, not a crash."""
    from facemask.detector import upright_rgb

    try:
        image.load()
        return upright_rgb(image)
    except Exception as exc:
        raise APIError(400, "truncated_image", f"the {image.format} image could not be decoded ({exc}); is the file complete?") from None


def declared_size(data: bytes) -> tuple[int | None, int | None]:
    """Width and height from a PNG or BMP header; Pillow refuses zero-size files without saying why."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return width, abs(height)
    return None, None


def check_model_id(model_id: str) -> str:
    if model_id and not MODEL_ID.match(model_id):
        raise APIError(400, "bad_model_id",
                       f"{MULTIPLEX_HEADER} {model_id[:70]!r}: expected a version number (3) or an alias (champion)")
    return model_id


def model_uri_for(model_id: str, default_uri: str) -> str:
    """A header value (`3`, `champion`) to a registry URI of the default model's registered name."""
    from facemask.tracking import REGISTERED_MODEL, parse_models_uri

    name = parse_models_uri(default_uri)[0] if default_uri.startswith("models:/") else REGISTERED_MODEL
    return f"models:/{name}/{model_id}" if model_id.isdigit() else f"models:/{name}@{model_id}"


def _use_registry(tracking_uri: str | None) -> None:
    """Point this replica's MLflow at the registry, with bounded retries (a dead server must not hang requests)."""
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def page_html() -> str:
    import json

    from facemask.plots import CLASS_COLORS

    html = resources.files("facemask").joinpath("web/index.html").read_text()
    classes = [{"name": n, "color": "#%02x%02x%02x" % c} for n, c in zip(CLASS_NAMES, CLASS_COLORS)]
    return html.replace("/*CLASSES*/[]", json.dumps(classes)).replace("{{HEADER}}", MULTIPLEX_HEADER)


def model_ref(detector) -> dict:
    info = detector.info
    return {"name": info.name, "version": info.version, "run_id": info.run_id, "uri": info.uri,
            "backend": "onnx" if info.weights.endswith(".onnx") else "pt"}


# ---------------------------------------------------------------- deployments


@serve.deployment(
    name="Detector",
    ray_actor_options={"num_cpus": 1},
    # Room for two full batches; more waits in the caller's queue, beyond that a quick 503.
    max_ongoing_requests=16,
    max_queued_requests=64,
    health_check_period_s=10,
)
class DetectorDeployment:
    """Runs the model: one call per batch of concurrent requests, per model version."""

    def __init__(self, args: dict) -> None:
        from PIL import Image

        from facemask.detector import load_detector
        from facemask.train import resolve_device

        self.args = AppArgs.model_validate(args)
        _use_registry(self.args.tracking_uri)
        Image.MAX_IMAGE_PIXELS = self.args.max_pixels
        self.device = resolve_device(self.args.device) if self.args.backend == "pt" else "cpu"
        self.default = load_detector(self.args.model_uri, device=self.device, backend=self.args.backend,
                                     threads=self.args.threads, warm=True)
        self.predict_batch.set_max_batch_size(self.args.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        self.aliases: dict[str, tuple[float, str]] = {}  # alias -> (looked up at, version)
        self.default_checked = time.monotonic()
        self.refreshing: asyncio.Task | None = None
        log.info("serving %s (version %s) on %s", self.default.info.uri, self.default.info.version, self.device)

    @serve.multiplexed(max_num_models_per_replica=3)
    async def load_version(self, model_id: str):
        from facemask.detector import load_detector
        from facemask.tracking import model_version

        uri = model_uri_for(model_id, self.args.model_uri)
        # An alias or number naming the default version reuses the loaded default.
        mv = await asyncio.to_thread(model_version, uri)
        if self.default.info.name == mv.name and self.default.info.version == str(mv.version):
            return self.default
        return await asyncio.to_thread(
            load_detector, f"models:/{mv.name}/{mv.version}", self.device, self.args.backend, self.args.threads,
            warm=True,
        )

    async def model_for_request(self):
        model_id = serve.get_multiplexed_model_id()
        if not model_id:
            self.follow_default_alias()
            return self.default
        if not model_id.isdigit():
            model_id = await self.alias_version(model_id)
        return await self.load_version(model_id)

    async def alias_version(self, alias: str) -> str:
        """The version an alias names, looked up at most every refresh_s (the registry is a network call)."""
        from facemask.tracking import model_version

        looked_up, version = self.aliases.get(alias, (0.0, ""))
        if not version or (self.args.refresh_s and time.monotonic() - looked_up > self.args.refresh_s):
            mv = await asyncio.to_thread(model_version, model_uri_for(alias, self.args.model_uri))
            version = str(mv.version)
            self.aliases[alias] = (time.monotonic(), version)
        return version

    def follow_default_alias(self) -> None:
        """Every refresh_s, in the background: if the app's alias moved, load the new version and swap it in."""
        if (not self.args.refresh_s or "@" not in self.args.model_uri or not self.args.model_uri.startswith("models:/")
                or self.refreshing is not None or time.monotonic() - self.default_checked < self.args.refresh_s):
            return

        async def refresh() -> None:
            from facemask.detector import load_detector

            try:
                alias = self.args.model_uri.split("@", 1)[1]
                self.aliases.pop(alias, None)
                version = await self.alias_version(alias)
                if version != self.default.info.version:
                    name = self.default.info.name
                    loaded = await asyncio.to_thread(load_detector, f"models:/{name}/{version}", self.device,
                                                     self.args.backend, self.args.threads, warm=True)
                    log.info("%s moved from version %s to %s; now serving %s", self.args.model_uri,
                             self.default.info.version, version, version)
                    self.default = loaded
            except Exception as exc:  # a registry outage must not stop serving the loaded model
                log.warning("could not look up %s (%s); still serving version %s", self.args.model_uri, exc,
                            self.default.info.version)
            finally:
                self.default_checked = time.monotonic()
                self.refreshing = None

        self.refreshing = asyncio.get_running_loop().create_task(refresh())

    async def __call__(self, payload: dict) -> dict:
        from facemask.detector import ModelNotFoundError

        try:
            detector = await self.model_for_request()
        except ModelNotFoundError as exc:
            return {"error": "model_not_found", "status": 404, "message": str(exc)}
        started = time.perf_counter()
        try:
            # Decoding here, off the event loop, overlaps it with the running batch and keeps
            # the ingress light: it ships the compressed bytes, not a decoded array.
            payload["image"] = await asyncio.to_thread(decode_image, payload.pop("image"), self.args.max_pixels)
        except APIError as exc:
            return {"error": exc.error, "status": exc.status, "message": exc.message}
        payload["queued_at"] = time.perf_counter()
        result = await self.predict_batch((detector, payload))
        width, height = payload["image"].size
        return {**result, "decode_ms": round((payload["queued_at"] - started) * 1000, 2),
                "image": {"width": width, "height": height}}

    async def info(self) -> dict:
        from facemask.detector import ModelNotFoundError

        try:
            detector = await self.model_for_request()
        except ModelNotFoundError as exc:
            return {"error": "model_not_found", "status": 404, "message": str(exc)}
        return {**model_ref(detector), "device": self.device, "classes": list(CLASS_NAMES),
                "metrics": detector.info.metrics}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def predict_batch(self, items: list[tuple[Any, dict]]) -> list[dict]:
        # One model call per (model, parameters) group; a batch mixes versions and settings.
        groups: dict[tuple, list[int]] = {}
        for i, (detector, p) in enumerate(items):
            groups.setdefault((id(detector), p["conf"], p["iou"], p["imgsz"], p["max_det"]), []).append(i)
        out: list[dict] = [{} for _ in items]
        for (_, conf, iou, imgsz, max_det), indexes in groups.items():
            detector = items[indexes[0]][0]
            started = time.perf_counter()
            found = await asyncio.to_thread(
                detector.predict, [items[i][1]["image"] for i in indexes], conf, iou, imgsz, max_det
            )
            inference_ms = (time.perf_counter() - started) * 1000
            for i, detections in zip(indexes, found):
                out[i] = {
                    "detections": [d.to_dict() for d in detections],
                    "model": model_ref(detector),
                    "inference_ms": round(inference_ms, 2),
                    "queue_ms": round((started - items[i][1]["queued_at"]) * 1000, 2),
                    "batch_size": len(indexes),
                }
        return out


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
    max_queued_requests=128,
)
@serve.ingress(api)
class Ingress:
    def __init__(self, detector, args: dict, api_key: str | None = None) -> None:
        from PIL import Image

        self.detector = detector
        self.handles: dict[tuple[str, str], Any] = {}
        self.args = AppArgs.model_validate(args)
        _use_registry(self.args.tracking_uri)
        self.api_key = api_key or None
        self.limit = int(self.args.max_body_mb * 1e6)
        Image.MAX_IMAGE_PIXELS = self.args.max_pixels

    def authorize(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if self.api_key is None:
            return
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), self.api_key.encode()):
            raise APIError(401, "unauthorized", "send the API key as 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})

    async def call_detector(self, method: str, request: Request, payload: Any = None) -> dict:
        from ray.serve.exceptions import BackPressureError

        model_id = check_model_id(request.headers.get(MULTIPLEX_HEADER, "").strip())
        key = (model_id, method)
        if key not in self.handles:  # .options() per request costs a measurable share of a small request
            if len(self.handles) > 64:
                self.handles.clear()
            self.handles[key] = self.detector.options(multiplexed_model_id=model_id, method_name=method)
        handle = self.handles[key]
        try:
            result = await (handle.remote(payload) if payload is not None else handle.remote())
        except BackPressureError:
            raise APIError(503, "overloaded", "the detector's queue is full; retry shortly", headers={"Retry-After": "1"}) from None
        if "error" in result:
            raise APIError(result["status"], result["error"], result["message"])
        return result

    async def detect(self, request: Request, conf: float, iou: float, imgsz: int, max_det: int) -> tuple[bytes, dict]:
        started = time.perf_counter()
        data = await image_bytes(request, self.limit)
        inspect_image(data, self.args.max_pixels)  # refuse bad input here; the detector decodes
        result = await self.call_detector(
            "__call__", request, {"image": data, "conf": conf, "iou": iou, "imgsz": imgsz, "max_det": max_det}
        )
        counts = {name: 0 for name in CLASS_NAMES}
        for d in result["detections"]:
            counts[d["label"]] += 1
        timings = {"decode_ms": result["decode_ms"], "queue_ms": result["queue_ms"],
                   "inference_ms": result["inference_ms"], "total_ms": round((time.perf_counter() - started) * 1000, 2),
                   "batch_size": result["batch_size"]}
        response = {"detections": result["detections"], "counts": counts, "image": result["image"],
                    "model": result["model"], "timings": timings}
        return data, response

    @api.post("/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra={"requestBody": IMAGE_BODY},
              summary="Detect faces and their mask state in one image")
    async def predict(
        self,
        request: Request,
        conf: float = Query(0.25, ge=0.0, le=1.0, description="Minimum confidence"),
        iou: float = Query(0.7, ge=0.0, le=1.0, description="IoU threshold of duplicate suppression"),
        imgsz: int = Query(640, ge=32, le=2048, description="Inference size in pixels (rounded to a multiple of 32)"),
        max_det: int = Query(300, ge=1, le=1000, description="Most detections returned"),
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> dict:
        self.authorize(credentials)
        return (await self.detect(request, conf, iou, imgsz, max_det))[1]

    @api.post("/predict/image", responses={**ERRORS, 200: {"content": {"image/jpeg": {}}, "description": "The image with boxes drawn"}},
              response_class=Response, openapi_extra={"requestBody": IMAGE_BODY},
              summary="The uploaded image with the detections drawn (JPEG)")
    async def predict_image(
        self,
        request: Request,
        conf: float = Query(0.25, ge=0.0, le=1.0),
        iou: float = Query(0.7, ge=0.0, le=1.0),
        imgsz: int = Query(640, ge=32, le=2048),
        max_det: int = Query(300, ge=1, le=1000),
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> Response:
        from facemask.plots import draw_boxes

        self.authorize(credentials)
        data, result = await self.detect(request, conf, iou, imgsz, max_det)
        image = decode_image(data, self.args.max_pixels)
        boxes = [(d["class_id"], *d["box"].values()) for d in result["detections"]]
        buffer = io.BytesIO()
        draw_boxes(image, boxes, width=max(2, round(max(image.size) / 300))).save(buffer, format="JPEG", quality=90)
        return Response(buffer.getvalue(), media_type="image/jpeg",
                        headers={"X-Detections": str(len(boxes)), "X-Model-Version": str(result["model"]["version"])})

    @api.get("/healthz", summary="Liveness: always open, no model call")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/model", response_model=ModelInfoResponse, responses=ERRORS, summary="The served model's metadata and metrics")
    async def model(self, request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> dict:
        self.authorize(credentials)
        return await self.call_detector("info", request)

    @api.get("/models", response_model=ModelsResponse, responses=ERRORS,
             summary=f"Registered versions with their metrics; pick one with the {MULTIPLEX_HEADER} header")
    async def models(self, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> dict:
        from facemask.tracking import list_versions, parse_models_uri

        self.authorize(credentials)
        uri = self.args.model_uri
        if not uri.startswith("models:/"):
            return {"default": uri, "versions": [], "registry_error": "serving a local file, not a registry model"}
        try:
            name = parse_models_uri(uri)[0]
            versions = await asyncio.to_thread(list_versions, name)
        except Exception as exc:  # an unreachable registry must not break the page
            return {"default": uri, "versions": [], "registry_error": f"{type(exc).__name__}: {exc}"}
        return {"default": uri, "versions": versions}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(page_html())


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens on it on loopback, else any free port."""
    import socket

    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def build_app(args: dict | AppArgs | None = None):
    """The Serve application for `args` (see AppArgs); used by serve/app.py and `facemask serve`."""
    from facemask.tracking import tracking_uri

    parsed = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    if parsed.tracking_uri is None:
        uri = tracking_uri()
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"  # replicas run in other folders
        parsed = parsed.model_copy(update={"tracking_uri": uri})
    plain = parsed.model_dump(exclude={"detector_options", "ingress_options"})
    detector = DetectorDeployment.options(**with_serve_env(parsed.detector_options, DetectorDeployment)).bind(plain)
    ingress = Ingress.options(**with_serve_env(parsed.ingress_options, Ingress))
    return ingress.bind(detector, plain, os.environ.get("FACEMASK_API_KEY"))


def with_serve_env(options: dict, deployment) -> dict:
    """Deployment options with SERVE_ENV added to the replicas' environment (the user's values win)."""
    actor = {**(deployment.ray_actor_options or {}), **options.get("ray_actor_options", {})}
    runtime_env = dict(actor.get("runtime_env") or {})
    runtime_env["env_vars"] = {**SERVE_ENV, **(runtime_env.get("env_vars") or {})}
    return {**options, "ray_actor_options": {**actor, "runtime_env": runtime_env}}


def app(args: dict):
    """Serve's application builder for `import_path: facemask.serving:app` (see serve/config.yaml)."""
    return build_app(AppArgs.model_validate(args))
