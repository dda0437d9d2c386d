"""The Ray Serve application: one deployment, a hardened FastAPI ingress that holds a batched, multiplexed model.

    serve run serve.app:app model_uri=models:/facemask-detector@champion
    serve deploy serve/config.yaml
    facemask serve --model-uri models:/facemask-detector@champion

Each replica checks every request (API key, body size, format, pixel count, parameters; see
`request_checks`), so nothing malformed reaches the model; answers follow `api_schema`. It
gathers concurrent requests into one model call (`facemask.batching`, in place of `@serve.batch`)
and keeps up to three
registry versions loaded per replica (`@serve.multiplexed`), chosen per request with the
`serve_multiplexed_model_id` header (a version number or an alias; default: the app's model).
"""

import asyncio
import io
import json
import logging
import os
import socket
import time
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from facemask import __version__
from facemask.api_schema import (
    ERRORS,
    IMAGE_BODY,
    MULTIPLEX_HEADER,
    APIError,
    ModelInfoResponse,
    ModelsResponse,
    PredictResponse,
)
from facemask.batching import Batcher
from facemask.classes import CLASS_NAMES, class_counts
from facemask.detector import load_detector
from facemask.drawing import CLASS_COLORS, draw_boxes
from facemask.errors import ModelNotFoundError
from facemask.live.session import LiveStreams
from facemask.modelref import model_uri_for, parse_models_uri
from facemask.request_checks import (
    PixelBudget,
    check_model_id,
    checked_api_key,
    decode_cost,
    decode_for_model,
    image_bytes,
    inference_query,
    inspect_image,
    key_matches,
    release_memory,
)
from facemask.runtime import SERVE_ENV, check_given_gpus, resolve_device
from facemask.settings import INFERENCE, INFERENCE_BOUNDS, ServeConfig
from facemask.simulated_gpu import NAME as SIMULATED
from facemask.simulated_gpu import SimulatedGPU, parse_latency
from facemask.tracking import list_versions, model_version, set_process_store, tracking_uri

log = logging.getLogger(__name__)
_DEFAULT = ServeConfig()
# After a request this large, the replica hands freed memory back to the OS.
LARGE_IMAGE_PIXELS = 4_000_000
# Images up to this many decoded pixels (a 640x480 frame) are decoded on the event loop: their
# decode costs less than the hop to a worker thread and back costs the loop under load.
INLINE_DECODE_PIXELS = 310_000


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
        "conf": "Minimum confidence",
        "iou": "IoU threshold of duplicate suppression",
        "imgsz": "Inference size in pixels (rounded to a multiple of 32)",
        "max_det": "Most detections returned",
    }
    parameters = []
    for name, text in descriptions.items():
        default, (low, high) = getattr(INFERENCE, name), INFERENCE_BOUNDS[name]
        kind = "integer" if isinstance(default, int) else "number"
        schema = {"type": kind, "minimum": low, "maximum": high, "default": default}
        parameters.append({"name": name, "in": "query", "required": False, "description": text, "schema": schema})
    return {
        "requestBody": IMAGE_BODY,
        "parameters": parameters,
        "security": [{bearer.scheme_name: []}],
        "description": description,
    }


def _use_registry(tracking_uri: str | None) -> None:
    """Point this replica's MLflow at the registry, with bounded retries (a dead server must not hang requests)."""
    if tracking_uri:
        set_process_store(tracking_uri)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def page_html() -> str:
    html = resources.files("facemask").joinpath("web/index.html").read_text()
    classes = [{"name": n, "color": "#%02x%02x%02x" % c} for n, c in zip(CLASS_NAMES, CLASS_COLORS)]
    return html.replace("/*CLASSES*/[]", json.dumps(classes)).replace("{{HEADER}}", MULTIPLEX_HEADER)


def scaled(detection: dict, scale: float, width: int, height: int) -> dict:
    """A detection's box from the decoded image's pixels to the source's."""
    if scale != 1:
        box = detection["box"]
        detection["box"] = {
            "x1": round(min(box["x1"] * scale, width), 1),
            "y1": round(min(box["y1"] * scale, height), 1),
            "x2": round(min(box["x2"] * scale, width), 1),
            "y2": round(min(box["y2"] * scale, height), 1),
        }
    return detection


def annotated_jpeg(image, boxes: list[tuple]) -> bytes:
    """The image with its boxes drawn, as JPEG bytes."""
    buffer = io.BytesIO()
    draw_boxes(image, boxes).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# ---------------------------------------------------------------- the deployment
# Serve pickles the deployment class where it is defined: every module-level name its
# methods use must be defined above it.


@serve.deployment(
    name="Facemask",
    ray_actor_options={"num_cpus": 1},
    # Two full batches in flight per replica; more wait in the proxy's queue, beyond that a quick 503.
    max_ongoing_requests=32,
    max_queued_requests=64,
    health_check_period_s=10,
)
@serve.ingress(api)
class FacemaskServer:
    """The whole endpoint in one replica: checks, decoding, the batched model call, the answer.

    One deployment, so a request makes one hop from the proxy (or none, with direct ingress)
    instead of two: the ingress -> detector hop cost 6-8 ms of CPU per request on 2 cores.
    Serve's router sends a request with a `serve_multiplexed_model_id` header to a replica
    that already holds that version.
    """

    def __init__(self, args: dict, api_key: str | None = None) -> None:
        from PIL import Image

        self.args = AppArgs.model_validate(args)
        _use_registry(self.args.tracking_uri)
        Image.MAX_IMAGE_PIXELS = self.args.max_pixels
        # The key from where the app was built, else this replica's own environment: Serve may
        # build the app on a node that lacks it, while each node (pod) carries its own.
        self.api_key = checked_api_key(
            api_key or os.environ.get("FACEMASK_API_KEY"),
            self.args.require_api_key,
            f"the replica on {socket.gethostname()}",
        )
        # Read by `require_key`, which runs before FastAPI validates a route's parameters.
        api.state.api_key = self.api_key
        self.limit = int(self.args.max_body_mb * 1e6)
        if self.args.backend != SIMULATED:
            check_given_gpus(f"the replica on {socket.gethostname()}")
        self.device = resolve_device(self.args.device) if self.args.backend == "pt" else "cpu"
        if self.args.backend == SIMULATED:
            self.default = SimulatedGPU(parse_latency(self.args.simulated_latency))
            self.device = SIMULATED
        else:
            self.default = load_detector(
                self.args.model_uri,
                device=self.device,
                backend=self.args.backend,
                threads=self.args.threads,
                warm=True,
                uri=self.args.tracking_uri,
            )
        self.arriving = 0  # requests decoding, or waiting for their share of the pixel budget
        self.batcher = Batcher(
            self.run_batch, self.args.max_batch_size, self.args.batch_wait_timeout_s, lambda: self.arriving
        )
        self.aliases: dict[str, tuple[float, str]] = {}  # alias -> (looked up at, version)
        self.default_checked = time.monotonic()
        self.refreshing: asyncio.Task | None = None
        self.pending = 0
        self.budget = PixelBudget(int(self.args.decode_budget_mp * 1e6))
        self.releasing: asyncio.TimerHandle | None = None
        self.live_streams = LiveStreams(self)
        log.info("serving %s (version %s) on %s", self.default.info.uri, self.default.info.version, self.device)

    # ------------------------------------------------------------ which model

    @serve.multiplexed(max_num_models_per_replica=3)
    async def load_version(self, model_id: str):
        uri = model_uri_for(model_id, self.args.model_uri)
        # An alias or number naming the default version reuses the loaded default.
        mv = await asyncio.to_thread(model_version, uri, self.args.tracking_uri)
        if self.default.info.name == mv.name and self.default.info.version == str(mv.version):
            return self.default
        return await asyncio.to_thread(self.load_registered, mv.name, mv.version)

    def load_registered(self, name: str, version: str | int):
        """One registered version, loaded the way this replica serves its default."""
        return load_detector(
            f"models:/{name}/{version}",
            self.device,
            self.args.backend,
            self.args.threads,
            warm=True,
            uri=self.args.tracking_uri,
        )

    async def model_for_request(self, request: Request):
        """The model a request asked for with its header (checked), else the app's default."""
        return await self.model_for_id(request.headers.get(MULTIPLEX_HEADER, ""))

    async def model_for_id(self, model_id: str):
        """The model a version number or alias names (checked), else the app's default."""
        model_id = check_model_id(model_id.strip())
        try:
            if self.args.backend == SIMULATED:  # a simulated accelerator has no versions
                return self.default
            if not model_id:
                self.follow_default_alias()
                return self.default
            if not model_id.isdigit():
                model_id = await self.alias_version(model_id)
            return await self.load_version(model_id)
        except ModelNotFoundError as exc:
            # The registry's address (a server, or a database path) is for the operator's logs, not for clients.
            message = str(exc).replace(self.args.tracking_uri, "the registry") if self.args.tracking_uri else str(exc)
            raise APIError(404, "model_not_found", message) from None

    async def alias_version(self, alias: str) -> str:
        """The version an alias names, looked up at most every refresh_s (the registry is a network call)."""
        looked_up, version = self.aliases.get(alias, (0.0, ""))
        if not version or (self.args.refresh_s and time.monotonic() - looked_up > self.args.refresh_s):
            uri = model_uri_for(alias, self.args.model_uri)
            mv = await asyncio.to_thread(model_version, uri, self.args.tracking_uri)
            version = str(mv.version)
            self.aliases[alias] = (time.monotonic(), version)
        return version

    def follow_default_alias(self) -> None:
        """Every refresh_s, in the background: if the app's alias moved, load the new version and swap it in."""
        if (
            not self.args.refresh_s
            or "@" not in self.args.model_uri
            or not self.args.model_uri.startswith("models:/")
            or self.refreshing is not None
            or time.monotonic() - self.default_checked < self.args.refresh_s
        ):
            return

        async def refresh() -> None:
            try:
                alias = self.args.model_uri.split("@", 1)[1]
                self.aliases.pop(alias, None)
                version = await self.alias_version(alias)
                if version != self.default.info.version:
                    name = self.default.info.name
                    loaded = await asyncio.to_thread(self.load_registered, name, version)
                    log.info(
                        "%s moved from version %s to %s; now serving %s",
                        self.args.model_uri,
                        self.default.info.version,
                        version,
                        version,
                    )
                    self.default = loaded
            except Exception as exc:  # a registry outage must not stop serving the loaded model
                log.warning(
                    "could not look up %s (%s); still serving version %s",
                    self.args.model_uri,
                    exc,
                    self.default.info.version,
                )
            finally:
                self.default_checked = time.monotonic()
                self.refreshing = None

        self.refreshing = asyncio.get_running_loop().create_task(refresh())

    # ------------------------------------------------------------ the model call

    async def run_batch(self, items: list[tuple[Any, Any, tuple, float]]) -> list[dict]:
        """One model call per (model, parameters) group of the requests that queued together (`batching`)."""
        groups: dict[tuple, list[int]] = {}
        for i, (detector, _, params, _) in enumerate(items):
            groups.setdefault((id(detector), params), []).append(i)
        out: list[dict] = [{} for _ in items]
        for (_, params), indexes in groups.items():
            detector = items[indexes[0]][0]
            started = time.perf_counter()
            found = await asyncio.to_thread(detector.predict, [items[i][1] for i in indexes], *params)
            inference_ms = (time.perf_counter() - started) * 1000
            for i, detections in zip(indexes, found):
                out[i] = {
                    "detections": detections,
                    "inference_ms": inference_ms,
                    "queue_ms": (started - items[i][3]) * 1000,
                    "batch_size": len(indexes),
                }
        return out

    async def detect(self, request: Request):
        """An HTTP request's key and query checked, its image read, checked and decoded, run through the batch.

        Returns (decoded image, its scale to the source, the answer).
        """
        check_key(request, bearer_token(request))
        params = inference_query(request.query_params)
        if self.pending >= self.args.max_pending:
            raise APIError(
                503,
                "overloaded",
                f"the server holds {self.pending} requests already; retry shortly",
                headers={"Retry-After": "1"},
            )
        self.pending += 1
        try:
            started = time.perf_counter()
            detector = await self.model_for_request(request)
            data = await image_bytes(request, self.limit, self.args.body_timeout_s)
            return await self.detect_bytes(detector, data, params, started)
        finally:
            self.pending -= 1

    async def detect_bytes(self, detector, data: bytes, params: tuple, started: float):
        """Check and decode one image's bytes, run it through the batch, and build the answer."""
        conf, iou, imgsz, max_det = params
        header = inspect_image(data, self.args.max_pixels)  # the header only: format, size, pixel count
        pixels = decode_cost(header, imgsz)
        self.arriving += 1  # on its way to the batch, which may wait for it
        arrived = False
        try:
            async with self.budget.hold(pixels):
                if pixels <= INLINE_DECODE_PIXELS:
                    image, scale = decode_for_model(header, imgsz)
                else:  # off the event loop: a large image must not stall other requests
                    image, scale = await asyncio.to_thread(decode_for_model, header, imgsz)
                queued, arrived = time.perf_counter(), True
                self.arriving -= 1
                result = await self.batcher.submit((detector, image, (conf, iou, imgsz, max_det), queued))
        finally:
            if not arrived:
                self.arriving -= 1
        if pixels > LARGE_IMAGE_PIXELS:
            self.schedule_release()
        width, height = header.size  # the source's size, turned as its EXIF orientation says
        if image.width != image.height and (image.width > image.height) != (width > height):
            width, height = height, width
        detections = [scaled(d.to_dict(), scale, width, height) for d in result["detections"]]
        counts = class_counts(detections)
        answer = {
            "detections": detections,
            "counts": counts,
            "image": {"width": width, "height": height},
            "model": self.describe(detector),
            "timings": {
                "decode_ms": round((queued - started) * 1000, 2),
                "queue_ms": round(result["queue_ms"], 2),
                "inference_ms": round(result["inference_ms"], 2),
                "total_ms": round((time.perf_counter() - started) * 1000, 2),
                "batch_size": result["batch_size"],
            },
        }
        return image, scale, answer

    def schedule_release(self) -> None:
        """Return freed memory to the OS once a burst of large images is over (at most once a second)."""
        if self.releasing is None:
            loop = asyncio.get_running_loop()

            def release() -> None:
                self.releasing = None
                loop.run_in_executor(None, release_memory)

            self.releasing = loop.call_later(1.0, release)

    # ------------------------------------------------------------ routes

    @api.post(
        "/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        openapi_extra=predict_openapi("The detections, their counts per class, the model and the timings."),
        summary="Detect faces and their mask state in one image",
    )
    async def predict(self, request: Request) -> Response:
        _, _, answer = await self.detect(request)
        # The answer is built to the schema already: serialised directly, without a pydantic round-trip.
        return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")

    @api.post(
        "/predict/image",
        responses={**ERRORS, 200: {"content": {"image/jpeg": {}}, "description": "The image with boxes drawn"}},
        response_class=Response,
        openapi_extra=predict_openapi("The uploaded image with the detections drawn."),
        summary="The uploaded image with the detections drawn (JPEG)",
    )
    async def predict_image(self, request: Request) -> Response:
        image, scale, answer = await self.detect(request)
        # Drawn on the image as decoded: a large JPEG comes back at once to twice imgsz.
        boxes = [(d["class_id"], *(v / scale for v in d["box"].values())) for d in answer["detections"]]
        jpeg = await asyncio.to_thread(annotated_jpeg, image, boxes)
        return Response(
            jpeg,
            media_type="image/jpeg",
            headers={"X-Detections": str(len(boxes)), "X-Model-Version": str(answer["model"]["version"])},
        )

    @api.get("/healthz", summary="Liveness: always open, no model call")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get(
        "/model", response_model=ModelInfoResponse, responses=ERRORS, summary="The served model's metadata and metrics"
    )
    async def model(self, request: Request, _: None = Depends(require_key)) -> dict:
        detector = await self.model_for_request(request)
        return {
            **self.describe(detector),
            "device": self.device,
            "classes": list(CLASS_NAMES),
            "metrics": detector.info.metrics,
        }

    @api.get(
        "/models",
        response_model=ModelsResponse,
        responses=ERRORS,
        summary=f"Registered versions with their metrics; pick one with the {MULTIPLEX_HEADER} header",
    )
    async def models(self, _: None = Depends(require_key)) -> dict:
        uri = self.args.model_uri
        if not uri.startswith("models:/"):
            return {"default": uri, "versions": [], "registry_error": "serving a local file, not a registry model"}
        try:
            name = parse_models_uri(uri)[0]
            versions = await asyncio.to_thread(list_versions, name, self.args.tracking_uri)
        except Exception as exc:  # an unreachable registry must not break the page
            return {"default": uri, "versions": [], "registry_error": f"{type(exc).__name__}: {exc}"}
        return {"default": uri, "versions": versions}

    # ------------------------------------------------------------ live video (facemask.live.session)

    @api.websocket("/live")
    async def live(self, ws: WebSocket) -> None:
        """A live stream of frames and settings over a WebSocket; see `facemask.live.session`."""
        await self.live_streams.serve(ws)

    @api.get("/live/streams", responses=ERRORS, summary="Open live streams and the trackers still in memory")
    async def live_stream_stats(self, _: None = Depends(require_key)) -> dict:
        return self.live_streams.stats()

    def describe(self, detector) -> dict:
        """What answers say of the model that made them (every model of a replica runs on its backend)."""
        return detector.info.summary(self.args.backend)

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(page_html())


def build_app(args: dict | AppArgs | None = None):
    """The Serve application for `args` (see AppArgs); used by serve/app.py and `facemask serve`."""
    parsed = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    if parsed.tracking_uri is None:
        uri = tracking_uri()
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"  # replicas run in other folders
        parsed = parsed.model_copy(update={"tracking_uri": uri})
    plain = parsed.model_dump(exclude={"deployment_options"})
    server = FacemaskServer.options(**with_serve_env(parsed.deployment_options, FacemaskServer))
    # Refused here already when the key is a placeholder; a missing one may still be on the replicas' nodes.
    key = checked_api_key(os.environ.get("FACEMASK_API_KEY"), False, "the environment where the app is built")
    return server.bind(plain, key)


def with_serve_env(options: dict, deployment) -> dict:
    """Deployment options with SERVE_ENV added to the replicas' environment; the user's values win,
    from the options or exported where the app is built (RAY_SERVE_LOG_TO_STDERR=1 to see Serve's logs)."""
    actor = {**(deployment.ray_actor_options or {}), **options.get("ray_actor_options", {})}
    runtime_env = dict(actor.get("runtime_env") or {})
    exported = {key: os.environ[key] for key in SERVE_ENV if key in os.environ}
    runtime_env["env_vars"] = {**SERVE_ENV, **exported, **(runtime_env.get("env_vars") or {})}
    return {**options, "ray_actor_options": {**actor, "runtime_env": runtime_env}}


def app(args: dict):
    """Serve's application builder for `import_path: facemask.serving:app` (see serve/config.yaml)."""
    return build_app(AppArgs.model_validate(args))
