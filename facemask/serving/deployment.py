"""The deployment and its application: one replica holds the routes, its models (`models`) and
its images in flight (`inference`); `build_app` binds it to its arguments (`config`)."""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations (`Request`,
# `WebSocket`, `Depends`) as objects; as strings, Serve's ingress cannot resolve them.
import asyncio
import json
import logging
import os
import socket
import time
from pathlib import Path

from fastapi import Depends, Request, WebSocket
from fastapi.responses import HTMLResponse, Response
from ray import serve

from facemask.core.classes import CLASS_NAMES
from facemask.core.runtime import SERVE_ENV, check_given_gpus, resolve_device
from facemask.core.settings import INFERENCE
from facemask.detection.detector import load_detector
from facemask.serving.api_schema import ERRORS, MULTIPLEX_HEADER, ModelInfoResponse, ModelsResponse, PredictResponse
from facemask.serving.config import AppArgs
from facemask.serving.http import annotated_jpeg, api, bearer_token, check_key, page_html, predict_openapi, require_key
from facemask.serving.inference import Inference
from facemask.serving.live.session import LiveStreams
from facemask.serving.metrics import version_label
from facemask.serving.models import Models
from facemask.serving.production import EndpointDrift, EndpointSampling, checked_sampling
from facemask.serving.request_checks import checked_api_key, image_bytes, inference_query
from facemask.serving.simulated_gpu import NAME as SIMULATED
from facemask.serving.simulated_gpu import SimulatedGPU, parse_latency
from facemask.tracking import default_tracking_uri, set_process_store

log = logging.getLogger("facemask.serving")


def use_registry(tracking_uri: str | None) -> None:
    """Point this replica's MLflow at the registry, with bounded retries (a dead server must not hang requests)."""
    if tracking_uri:
        set_process_store(tracking_uri)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


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
    instead of two (docs/performance.md measured the second hop). Serve's router sends a
    request with a `serve_multiplexed_model_id` header to a replica that already holds that version.
    """

    def __init__(self, args: dict, api_key: str | None = None) -> None:
        from PIL import Image

        self.args = AppArgs.model_validate(args)
        use_registry(self.args.tracking_uri)
        Image.MAX_IMAGE_PIXELS = self.args.max_pixels
        # The key from where the app was built, else this replica's own environment: Serve may
        # build the app on a node that lacks it, while each node (pod) carries its own.
        where = f"the replica on {socket.gethostname()}"
        self.api_key = checked_api_key(api_key or os.environ.get("FACEMASK_API_KEY"), self.args.require_api_key, where)
        # Read by `require_key`, which runs before FastAPI validates a route's parameters.
        api.state.api_key = self.api_key
        if self.args.backend == SIMULATED:
            default, self.device = SimulatedGPU(parse_latency(self.args.simulated_latency)), SIMULATED
        else:
            check_given_gpus(where)
            self.device = resolve_device(self.args.device) if self.args.backend == "pt" else "cpu"
            a = self.args
            default = load_detector(
                a.model_uri, self.device, a.backend, a.threads, warm=True, tracking_uri=a.tracking_uri
            )
        self.catalog = Models(self.args, default, self.device, self.load_version)
        self.inference = Inference(self.args, self.args.backend)
        self.live_streams = LiveStreams(self)
        self.drift, self.sampling = EndpointDrift(INFERENCE.conf), None
        if self.args.sampling is not None:
            rule, folder = checked_sampling(self.args.sampling, self.args.samples_dir)
            self.sampling = EndpointSampling(rule, folder, INFERENCE.conf)
        log.info("serving %s (version %s) on %s", default.info.uri, default.info.version, self.device)

    @serve.multiplexed(max_num_models_per_replica=3)
    async def load_version(self, model_id: str):
        return await self.catalog.version(model_id)

    async def model_for_id(self, model_id: str):
        """The model a version number or alias names (checked), else the app's default."""
        return await self.catalog.for_id(model_id)

    async def detect(self, request: Request):
        """An HTTP request's key and query checked, its image read, checked and decoded, run through
        the batch: (decoded image, its scale to the source, the answer)."""
        check_key(request, bearer_token(request))
        params = inference_query(request.query_params)
        async with self.inference.admitted("the server holds {pending} requests already; retry shortly"):
            started = time.perf_counter()
            detector = await self.model_for_id(request.headers.get(MULTIPLEX_HEADER, ""))
            data = await image_bytes(request, self.inference.limit, self.args.body_timeout_s)
            image, scale, answer = await self.inference.detect(detector, data, params, started)
        self.production("predict", detector, image, scale, answer)
        return image, scale, answer

    def production(self, source: str, detector, image, scale: float, answer: dict, weak: list[dict] = ()) -> None:
        """An answered image to drift, and to sampling when on (facemask.serving.production); a
        failure there is logged and costs the figure or the sample, never the answer."""
        try:
            self.drift.update(
                source, detector, version_label(answer["model"]), answer["detections"] + list(weak), time.time()
            )
            if self.sampling is not None:
                self.sampling.offer(source, detector, image, scale, answer, weak)
        except Exception as exc:  # noqa: BLE001 - best effort, counted; the answer stands
            log.warning("an answer was not given to drift or sampling: %s: %s", type(exc).__name__, exc)

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
        headers = {"X-Model-Version": version_label(answer["model"])}
        return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json", headers=headers)

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
        headers = {"X-Detections": str(len(boxes)), "X-Model-Version": version_label(answer["model"])}
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    @api.get("/healthz", summary="Liveness: always open, no model call")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get(
        "/model", response_model=ModelInfoResponse, responses=ERRORS, summary="The served model's metadata and metrics"
    )
    async def model(self, request: Request, _: None = Depends(require_key)) -> dict:
        detector = await self.model_for_id(request.headers.get(MULTIPLEX_HEADER, ""))
        info = {"device": self.device, "classes": list(CLASS_NAMES), "metrics": detector.info.metrics}
        return {**self.inference.describe(detector), **info}

    @api.get(
        "/models",
        response_model=ModelsResponse,
        responses=ERRORS,
        summary=f"Registered versions with their metrics; pick one with the {MULTIPLEX_HEADER} header",
    )
    async def models(self, _: None = Depends(require_key)) -> dict:
        return await self.catalog.versions()

    @api.websocket("/live")
    async def live(self, ws: WebSocket) -> None:
        """A live stream of frames and settings over a WebSocket; see `facemask.serving.live.session`."""
        await self.live_streams.serve(ws)

    @api.get("/live/streams", responses=ERRORS, summary="Open live streams and the trackers still in memory")
    async def live_stream_stats(self, _: None = Depends(require_key)) -> dict:
        return await self.live_streams.stats()

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(page_html())


def build_app(args: dict | AppArgs | None = None):
    """The Serve application for `args` (see AppArgs); used by serve/app.py and `facemask serve`."""
    parsed = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    if parsed.tracking_uri is None:
        store = default_tracking_uri()
        if store.startswith("sqlite:///") and not store.startswith("sqlite:////"):
            store = f"sqlite:///{Path(store[len('sqlite:///') :]).resolve()}"  # replicas run in other folders
        parsed = parsed.model_copy(update={"tracking_uri": store})
    rule, folder = checked_sampling(parsed.sampling, parsed.samples_dir)  # a mistake stops the build, in one line
    parsed = parsed.model_copy(update={"sampling": rule, "samples_dir": folder})
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
