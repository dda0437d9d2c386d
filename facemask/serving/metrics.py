"""What a replica tells Prometheus. Ray's metrics agent serves these on every node's metrics port
beside Serve's own (`ray_serve_*`); Ray prefixes each name with `ray_` (a Counter also gets
`_total`). docs/operating.md lists them with the dashboard's queries.

Made once per replica process, on first use: `ray.util.metrics` needs the replica's Ray worker.
Each label's values are bounded: routes are the app's own, classes the model's three, versions
the registry's, streams a replica's open ones: a stream's gauges are retired when it closes.

Retiring a gauge: `ray.util.metrics` has no call to delete a series. Ray 2.60's exporter drops
a series whose value is NaN at its next report (about 10 s), and one that is not set again for
two report periods (about 20 s); `LiveGauges.retire` sets NaN, so a closed stream leaves the
scrape and every sum within a report period (tests/unit/test_metrics_labels.py checks the
calls; docs/operating.md says what a dashboard sees).
"""

from __future__ import annotations

from facemask.core.classes import CLASS_NAMES

NAN = float("nan")

# The app's routes; any other path is counted as "other", so a scan cannot grow the label set.
ROUTES = ("/predict", "/predict/image", "/live", "/live/streams", "/models", "/model", "/healthz", "/")
LONGEST_FIRST = sorted(ROUTES, key=len, reverse=True)  # /predict/image before /predict
# Seconds: from a frame's 5 ms decode to a saturated CPU replica's multi-second queue.
LATENCY_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64]
# The stages an answer's `timings` name, as the latency histogram's `stage` label.
STAGES = {"decode_ms": "decode", "queue_ms": "queue", "inference_ms": "inference", "total_ms": "total"}


def version_label(model: dict) -> str:
    """An answer's model version as a label and header value: "none" for a model outside the registry."""
    return str(model.get("version") or "none")


def route_of(path: str) -> str:
    """A request path as a bounded route label (a prefix such as /secured is the app's mount, not a route)."""
    for route in LONGEST_FIRST:
        if path == route or (route != "/" and path.endswith(route)):
            return route
    return "/" if path.rstrip("/").count("/") <= 1 else "other"


class ReplicaMetrics:
    """The replica's counters, histograms and gauges (ray.util.metrics)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self.requests = Counter(
            "facemask_requests",
            description="HTTP requests answered, by route, status and the model version that answered.",
            tag_keys=("route", "status", "model_version"),
        )
        self.latency = Histogram(
            "facemask_latency_seconds",
            description="Time per image by stage: decode, queue (waiting for its batch), inference, total.",
            boundaries=LATENCY_BOUNDS,
            tag_keys=("stage",),
        )
        self.batch = Histogram(
            "facemask_batch_size", description="Images per model call.", boundaries=BATCH_BOUNDS, tag_keys=()
        )
        # Model calls, counted from their images (1/batch size each): with the images counted in
        # the latency histogram, the mean batch size. Ray 2.60 exports a histogram's `_sum` from
        # its buckets' midpoints, not the values observed, so a mean from `_sum` is wrong.
        self.calls = Counter("facemask_model_calls", description="Model calls (batches).", tag_keys=())
        self.detections = Counter(
            "facemask_detections",
            description="Faces detected, by class and model version.",
            tag_keys=("class", "model_version"),
        )
        # The endpoint's sampling (facemask.serving.production): frames seen, kept (and why), skipped
        # as duplicates or over the hourly limit, written, dropped on a full queue, failed.
        self.samples = Counter(
            "facemask_samples", description="Sampling decisions and writes, by outcome.", tag_keys=("outcome",)
        )
        # The endpoint's drift (facemask.serving.production): the same series a watch exports per camera.
        self.drift_psi = Gauge(
            "facemask_drift_psi",
            description="Population stability index of a camera's answers against val: kind=class_mix or score.",
            tag_keys=("camera", "kind"),
        )
        self.live_streams = LiveGauges()

    def sampled(self, outcome: str, count: int) -> None:
        self.samples.inc(count, tags={"outcome": outcome})

    def drift(self, series: str, figures: dict | None) -> None:
        """A source's drift figures; NaN (left out of the scrape) while too few answers give none."""
        for kind in ("class_mix", "score"):
            self.drift_psi.set(NAN if figures is None else figures[kind], tags={"camera": series, "kind": kind})

    def request(self, path: str, status: int, version: str) -> None:
        self.requests.inc(1, tags={"route": route_of(path), "status": str(status), "model_version": version})

    def answer(self, answer: dict) -> None:
        """One image's answer: its stage timings, its batch's size, its detections."""
        timings = answer["timings"]
        for key, stage in STAGES.items():
            if key in timings:
                self.latency.observe(timings[key] / 1000, tags={"stage": stage})
        self.batch.observe(timings["batch_size"])
        self.calls.inc(1 / max(1, timings["batch_size"]))
        version = version_label(answer["model"])
        for name, count in answer["counts"].items():
            if count:
                self.detections.inc(count, tags={"class": name, "model_version": version})

    def live(self, stream: int, summary: dict) -> None:
        """A live stream's people so far (`PeopleTracker.summary()`) and its compliance ratio."""
        self.live_streams.set(str(stream), summary["by_class"], summary["share"]["with_mask"])

    def retire_live(self, stream: int) -> None:
        """A closed stream's gauges leave the scrape (and every sum)."""
        self.live_streams.retire(str(stream))


class LiveGauges:
    """People by mask state and the share masked, per stream: a /live stream's, or a watched
    camera's (`facemask.video.watch.metrics`), under the same names so one query covers both."""

    def __init__(self) -> None:
        from ray.util.metrics import Gauge

        self.people = Gauge(
            "facemask_live_people",
            description="People seen on a live stream (each once), by mask state.",
            tag_keys=("stream", "state"),
        )
        self.compliance = Gauge(
            "facemask_live_compliance_ratio",
            description="Share of a live stream's people wearing a mask correctly.",
            tag_keys=("stream",),
        )

    def set(self, stream: str, by_class: dict[str, int], compliance: float | None) -> None:
        """compliance None (nobody seen): the ratio keeps its last value rather than a made-up one."""
        for state in CLASS_NAMES:
            self.people.set(by_class[state], tags={"stream": stream, "state": state})
        if compliance is not None:
            self.compliance.set(compliance, tags={"stream": stream})

    def retire(self, stream: str) -> None:
        """The stream ended: its series leave the export (NaN is not exported; see the module docstring)."""
        for state in CLASS_NAMES:
            self.people.set(NAN, tags={"stream": stream, "state": state})
        self.compliance.set(NAN, tags={"stream": stream})


class NoMetrics:
    """Outside a Ray worker (the app served by a test client): nothing is recorded."""

    def request(self, path: str, status: int, version: str) -> None:
        pass

    def sampled(self, outcome: str, count: int) -> None:
        pass

    def drift(self, series: str, figures: dict | None) -> None:
        pass

    def answer(self, answer: dict) -> None:
        pass

    def live(self, stream: int, summary: dict) -> None:
        pass

    def retire_live(self, stream: int) -> None:
        pass


_METRICS: ReplicaMetrics | NoMetrics | None = None


def replica_metrics() -> ReplicaMetrics | NoMetrics:
    """This process's metrics, made on first use."""
    global _METRICS
    if _METRICS is None:
        import ray

        _METRICS = ReplicaMetrics() if ray.is_initialized() else NoMetrics()
    return _METRICS


class RequestMetrics:
    """ASGI middleware: every HTTP answer counted by route, status and the model version its
    `X-Model-Version` header names ("none" for an answer no model made). Plain ASGI, not
    Starlette's BaseHTTPMiddleware, which costs a task per request."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = {"status": 500, "version": "none"}

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers") or []:
                    if name.lower() == b"x-model-version":
                        seen["version"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            replica_metrics().request(scope.get("path", ""), seen["status"], seen["version"])
