"""Every stage's typed config: frozen dataclasses with their defaults and checks, in one leaf.

The CLI builds its options' defaults from these fields, so each default is written once,
and `facemask --help` reads them without importing the stages (numpy, Ray, Ultralytics).
Every run records its resolved config (the manifest, MLflow params).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from facemask.core.classes import CLASS_NAMES, IGNORE, MINORITY_CLASSES
from facemask.core.errors import ConfigError, InputNotFoundError
from facemask.core.modelref import DEFAULT_MODEL_URI, REGISTERED_MODEL
from facemask.core.runtime import where_relative

BLEND_MODES = ("overlay", "feather", "poisson")
ENGINES = ("auto", "ray", "local")
SOURCE_FORMATS = ("auto", "voc", "yolo", "coco")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
# The names and addresses that reach only this machine (the watch's page opens its API on them).
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


def is_stream(source: str | Path) -> bool:
    """A camera index (0, 1, ...) or a stream URL, as opposed to a folder or video file."""
    text = str(source)
    return text.isdigit() or text.lower().startswith(STREAM_SCHEMES)


def app_field(value: Any, description: str, **bounds: Any) -> Any:
    """A ServeConfig default that is also an argument of the Serve application, with its description
    and bounds (pydantic's `gt`, `ge`, `le`, `pattern`) for `serving.config.AppArgs`."""
    return field(default=value, metadata={"app": {"description": description, **bounds}})


def default(config: type, name: str) -> Any:
    """The default of field `name` of a config dataclass (for CLI options)."""
    for f in fields(config):
        if f.name == name:
            return f.default_factory() if f.default is MISSING else f.default
    raise KeyError(f"{config.__name__} has no field {name!r}")


def validate_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    """Check a (train, val, test) triple; raise ConfigError that says how to fix it."""
    if len(fractions) != 3:
        raise ConfigError(f"--split needs three fractions train,val,test; got {fractions}")
    if any(f < 0 for f in fractions) or fractions[0] <= 0 or fractions[1] <= 0:
        raise ConfigError(f"--split {fractions}: train and val must be > 0 and test >= 0")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"--split {fractions} sums to {sum(fractions):.3f}; the fractions must sum to 1")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


@dataclass(frozen=True)
class InferenceParams:
    """How an image goes through the detector: the defaults every entry point shares (predict,
    evaluate, export, the HTTP API, live streams, batch inference) and the bounds they check."""

    conf: float = 0.25
    iou: float = 0.7
    imgsz: int = 640
    max_det: int = 300


INFERENCE = InferenceParams()
# The inclusive range of each parameter, as the HTTP API and live streams enforce it.
INFERENCE_BOUNDS: dict[str, tuple[float, float]] = {
    "conf": (0.0, 1.0),
    "iou": (0.0, 1.0),
    "imgsz": (32, 2048),
    "max_det": (1, 1000),
}


@dataclass(frozen=True)
class AugmentConfig:
    """How many objects to paste, of which classes, and how to blend them.

    Either `pastes_per_class` (explicit counts) or `balance_ratio` (raise each chosen
    class to that fraction of the majority class's train count) decides the amounts.
    """

    classes: tuple[str, ...] = MINORITY_CLASSES
    balance_ratio: float | None = 0.5
    pastes_per_class: tuple[tuple[str, int], ...] = ()
    pastes_per_image: int = 4
    blend: str = "feather"
    min_crop_px: int = 8
    max_attempts: int = 40

    def validate(self) -> "AugmentConfig":
        for name in self.classes + tuple(c for c, _ in self.pastes_per_class):
            if name not in CLASS_NAMES:
                raise ConfigError(f"--synthetic-classes: unknown class {name!r}; valid: {', '.join(CLASS_NAMES)}")
        if self.blend not in BLEND_MODES:
            raise ConfigError(f"--blend {self.blend!r}: choose one of {', '.join(BLEND_MODES)}")
        if self.balance_ratio is not None and not 0 <= self.balance_ratio <= 1:
            raise ConfigError(f"--balance {self.balance_ratio}: must be between 0 and 1 (0 turns pasting off)")
        if self.pastes_per_image < 1:
            raise ConfigError("--pastes-per-image must be at least 1")
        return self

    def to_dict(self) -> dict:
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["pastes_per_class"] = dict(self.pastes_per_class)
        return data


@dataclass(frozen=True)
class ReadConfig:
    """How a labelled source is read: its format and what its labels mean (facemask.data.sources)."""

    format: str = "auto"  # auto, voc, yolo or coco
    class_map: tuple[tuple[str, str], ...] = ()  # (source label, class name or IGNORE)
    drop_unknown: bool = False  # drop boxes whose label maps to no class, instead of stopping

    def validate(self) -> "ReadConfig":
        if self.format not in SOURCE_FORMATS:
            raise ConfigError(f"--format {self.format!r}: choose one of {', '.join(SOURCE_FORMATS)}")
        targets = (*CLASS_NAMES, IGNORE)
        for label, name in self.class_map:
            if name not in targets:
                raise ConfigError(f"--class-map {label}={name}: map to one of {', '.join(targets)}")
        return self

    @property
    def mapping(self) -> dict[str, str]:
        return dict(self.class_map)

    def fingerprinted(self) -> dict:
        return {"class_map": dict(self.class_map), "drop_unknown": self.drop_unknown}


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that decides the prepared dataset. `engine` decides only how it runs."""

    source: Path
    out: Path
    engine: str = "auto"  # auto: Ray on a connected cluster or a large input, else one process
    seed: int = 0
    split: tuple[float, float, float] = (0.7, 0.2, 0.1)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    read: ReadConfig = field(default_factory=ReadConfig)
    plots: bool = True
    # Repeat-factor sampling (facemask.data.sampling): training images holding a class found in
    # fewer than this fraction of them are listed more than once. None: every image once.
    repeat_threshold: float | None = None
    # A previous version (its folder or splits.json): its images stay in their splits, new ones go
    # to train and val only, and the test split is kept whole (facemask.data.split.split_keeping).
    keep_splits: Path | None = None

    def validate(self) -> "PrepareConfig":
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine {self.engine!r}: choose one of {', '.join(ENGINES)}")
        validate_fractions(self.split)
        self.augment.validate()
        self.read.validate()
        if self.repeat_threshold is not None and not 0 < self.repeat_threshold <= 1:
            raise ConfigError(
                f"--repeat-threshold {self.repeat_threshold}: a fraction of the training images in (0, 1], "
                "such as 0.3; leave it out to list every image once"
            )
        return self

    def fingerprinted(self) -> dict:
        """The part of the config that changes the output (not where or how it runs)."""
        out = {"seed": self.seed, "split": list(self.split), "augment": self.augment.to_dict()}
        if self.repeat_threshold is not None:  # absent by default, so earlier fingerprints stay valid
            out["repeat_threshold"] = self.repeat_threshold
        if self.read != ReadConfig():  # likewise: a plain read leaves the fingerprint as it was
            out["read"] = self.read.fingerprinted()
        return out


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The defaults are the GPU recipe's: pretrained yolo26s, 50 epochs, batch 8, 640."""

    data: Path
    model: str = "yolo26s.pt"
    epochs: int = 50
    imgsz: int = INFERENCE.imgsz
    batch: int = 8
    device: str = "auto"
    experiment: str = "facemask"
    run_name: str | None = None
    register: bool = False
    registered_model: str = REGISTERED_MODEL
    project: Path = Path("runs/train")
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    plots: bool = True
    # Dataloader workers on a GPU, capped at the CPUs this process was given (train.size_threads);
    # Ultralytics uses none on a CPU. An H100 training yolo26n at 640 ran at 0.50x its limit fed
    # by 2, 0.81x by 8 (docs/performance.md, "The training loop against its limit").
    workers: int = 8
    # False trains without MLflow (the baseline the logging overhead is measured against).
    tracking: bool = True
    # The MLflow store, resolved once by the entry point (`tracking.tracking_uri()`) and passed down.
    tracking_uri: str = field(kw_only=True)
    # Continue an existing MLflow run (a Tune trial restarted after a crash) ...
    run_id: str | None = None
    # ... from this Ultralytics last.pt, with its optimizer state and epoch counter.
    resume_from: Path | None = None


@dataclass(frozen=True)
class DistributedConfig:
    """How one training is spread over Ray Train workers (`facemask train --ray-workers N`)."""

    workers: int = 1  # 1: the plain single-process training
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1
    storage: str | None = None  # checkpoints: a shared path or s3://...; default PROJECT/ray-train
    max_failures: int = 2  # restarts of the worker group from the newest checkpoint


@dataclass(frozen=True)
class StudyConfig:
    data: Path
    model: str = "yolo26s.pt"
    trials: int = 20
    epochs: int = 10
    imgsz: int = INFERENCE.imgsz
    batch: int = 8
    search_space: Path | None = None
    cpus_per_trial: float = 2
    gpus_per_trial: float = 0
    # Custom Ray resources each trial needs, e.g. {"trainer": 1} to pin trials to nodes started with it.
    trial_resources: dict[str, float] = field(default_factory=dict)
    max_concurrent: int | None = None
    time_budget_s: float | None = None
    storage: str = "runs/tune"
    name: str = "facemask-study"
    resume: bool = False
    final_epochs: int = 0
    grace_period: int = 1
    reduction_factor: float = 2
    max_failures: int = 2
    metric: str = "mAP50-95"
    mode: str = "max"
    seed: int = 0
    experiment: str = "facemask-tune"
    registered_model: str = REGISTERED_MODEL
    promote: bool = True
    workers: int = 8  # a trial's dataloader workers on a GPU, capped at its CPUs (as TrainConfig's)
    # >1: each trial (and the final retrain) is one model trained by this many Ray Train
    # workers, which share the trial's CPUs and GPUs equally.
    ray_workers_per_trial: int = 1
    # False runs every trial to the end (the baseline ASHA is measured against).
    asha: bool = True
    # False skips registering, evaluating and promoting the best trial.
    register: bool = True
    # A second objective, minimised: batch-1 latency on this target (facemask.training.cost.TARGETS).
    # The study then keeps a Pareto front of score against latency and registers every version on it.
    latency_target: str | None = None
    # With a latency target: the version on the front that `promote` puts to the gate is the best
    # scoring one within this many milliseconds a frame; None registers the front and promotes none.
    max_latency_ms: float | None = None
    tracking_uri: str = field(kw_only=True)

    @property
    def device(self) -> str:
        """The Ultralytics device of a process Ray gave this study's GPUs to (it sees them renumbered from 0)."""
        return "0" if self.gpus_per_trial > 0 else "cpu"

    def train_config(self, **fields_) -> "TrainConfig":
        """The training of one trial (or of the final retrain): the study's model, sizes, seed and
        experiment, with `fields_` (data, run_name, overrides, ...) on top."""
        shared = {"model": self.model, "epochs": self.epochs, "imgsz": self.imgsz, "batch": self.batch}
        shared |= {"device": self.device, "experiment": self.experiment, "seed": self.seed, "workers": self.workers}
        shared["tracking_uri"] = self.tracking_uri
        return TrainConfig(**{**shared, **fields_})


@dataclass(frozen=True)
class PredictConfig:
    source: Path
    out: Path
    model_uri: str = DEFAULT_MODEL_URI
    # None: the version's operating point (its per-class thresholds and size), else 0.25 at 640.
    conf: float | None = None
    iou: float = INFERENCE.iou
    imgsz: int | None = None
    max_det: int = INFERENCE.max_det
    backend: str = "pt"
    device: str = "auto"
    batch_size: int = 8
    concurrency: int | None = None  # model actors; default: one per CPU of the cluster
    engine: str = "auto"  # auto: Ray on a connected cluster or a machine with cores to share, else one process
    frames_per_task: int = 32
    # Camera and stream sources (a camera index or an rtsp:// / http:// URL) only:
    max_frames: int | None = None  # stop after this many processed frames
    max_seconds: float | None = None  # stop after this long
    save: bool = False  # also write annotated.mp4
    tracking_uri: str = field(kw_only=True)

    def validate(self) -> "PredictConfig":
        if (self.max_frames is not None and self.max_frames < 1) or (
            self.max_seconds is not None and self.max_seconds <= 0
        ):
            raise ConfigError("--max-frames and --max-seconds must be positive")
        if is_stream(self.source):
            if not 0 <= (self.conf or 0) <= 1 or not 0 <= self.iou <= 1:
                raise ConfigError("--conf and --iou must be between 0 and 1")
            return self
        if not self.source.exists():
            raise InputNotFoundError(f"{self.source}: no such folder or video file{where_relative(self.source)}")
        if self.source.is_file() and self.source.suffix.lower() not in VIDEO_SUFFIXES:
            raise ConfigError(f"{self.source}: expected a folder of images or a video ({', '.join(VIDEO_SUFFIXES)})")
        if not 0 <= (self.conf or 0) <= 1 or not 0 <= self.iou <= 1:
            raise ConfigError("--conf and --iou must be between 0 and 1")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine {self.engine!r}: choose one of {', '.join(ENGINES)}")
        return self


@dataclass(frozen=True)
class ServeConfig:
    """Defaults of the Serve application and of `facemask serve`. A field with `app(...)` metadata
    is also an argument of the application (`serving.config.AppArgs` is built from them, with
    their bounds and descriptions), so each is written once."""

    model_uri: str = app_field(DEFAULT_MODEL_URI, "models:/NAME@ALIAS, models:/NAME/N, runs:/..., or a local .pt/.onnx")
    backend: str = app_field(
        "pt",
        "pt (PyTorch), onnx (onnxruntime, CPU), or simulated-gpu (capacity tests only: no model, "
        "a GPU's batch latency, a fixed pattern of boxes)",
        pattern="^(pt|onnx|simulated-gpu)$",
    )
    # The simulated-gpu backend's call time per batch size (BATCH:MS): yolo26n at 640 on an H100
    # (docs/performance.md). A call costs about the same up to a batch of 8 (kernel launches,
    # not arithmetic); beyond it the time grows with the batch.
    simulated_latency: str = app_field(
        "8:5.2,32:10.4", "simulated-gpu: BATCH:MS pairs, the call time of each batch size (interpolated between)"
    )
    device: str = app_field("auto", "auto (the GPU if the replica has one), cpu, or a GPU index")
    host: str = "127.0.0.1"
    port: int = 8000
    # haproxy: HAProxy straight to each replica's own HTTP server (Serve's direct ingress);
    # proxy: Serve's Python proxy with facemask.serving.proxy_guard, which spent more CPU per request
    # than the whole HAProxy path (docs/performance.md, docs/reliability.md for what differs).
    ingress: str = "haproxy"
    replicas: int = 1
    # MIN:MAX replicas scaled on the requests each holds (Serve's autoscaler) instead of a fixed
    # count: one more replica when they hold over target_ongoing each for upscale_delay_s, one
    # fewer when under it for downscale_delay_s (docs/operating.md has a ramp measured here).
    autoscale: str | None = None
    target_ongoing: float = 8.0  # a full default batch (max_batch_size) per replica
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 120.0
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_body_mb: float = app_field(10.0, "Larger bodies get 413", gt=0)
    body_timeout_s: float = app_field(30.0, "A body not all arrived after this gets 408", gt=0)
    max_pixels: int = app_field(40_000_000, "Larger images (decompression bombs) get 413", gt=0)
    decode_budget_mp: float = app_field(
        64.0,
        "Megapixels a replica holds decoded at once; more requests wait for their share (bounds memory under "
        "large images)",
        gt=0,
    )
    refresh_s: float = app_field(
        30.0,
        "How often an alias (the default @champion, or one named in the header) is looked up again, so a "
        "promotion is served without a redeploy; 0: never",
        ge=0,
    )
    max_pending: int = app_field(
        32,
        "Requests a replica holds (reading, decoding, waiting for or in the model); more get a JSON 503 with "
        "Retry-After at once",
        ge=1,
    )
    max_batch_size: int = app_field(8, "The most requests in one model call", ge=1, le=256)
    # A batch waits at most this long, and only for requests already decoding in the replica:
    # at low load a request goes straight to the model (facemask.serving.batching).
    batch_wait_timeout_s: float = app_field(
        0.005,
        "The longest a batch waits for requests already inside the replica (decoding) to join it; with none on "
        "their way it starts at once",
        ge=0,
        le=1,
    )
    threads: int | None = app_field(
        None,
        "CPU inference threads per detector replica (torch or onnxruntime); default: torch's under Ray (the "
        "replica's num_cpus), all cores for onnxruntime",
        ge=1,
    )
    # A deployment that must not answer without a key (serve/config.yaml, the RayService): a
    # replica with no FACEMASK_API_KEY, or with a placeholder, refuses to start.
    require_api_key: bool = app_field(
        False,
        "Refuse to start a replica that has no FACEMASK_API_KEY (from where the app is built, or its own "
        "environment) or has a placeholder: a deployment meant to be protected never serves open",
    )
    # Images the model was unsure about, kept for labelling (facemask.serving.production,
    # docs/learning.md): the fields of a camera list's `sampling:` section. None: off.
    sampling: dict | None = app_field(
        None,
        "Keep images the model was unsure about for labelling: a `sampling:` section's fields (faces: keep|blur "
        "must be given; band, rare, flips, random_share, per_hour, max_mb, max_age_days); off when not given",
    )
    samples_dir: str | None = app_field(
        None,
        "Where sampled images and their pre-labels go (a folder every replica can write: a shared volume on a "
        "cluster); default: samples/endpoint under FACEMASK_HOME's results",
    )


@dataclass(frozen=True)
class WatchConfig:
    """`facemask watch`: many cameras, one batched detector, compliance per camera per window."""

    cameras: Path
    out: Path
    model_uri: str = DEFAULT_MODEL_URI
    backend: str = "pt"  # pt, onnx, or simulated-gpu (capacity tests: a GPU's batch latency, no model)
    simulated_latency: str = ServeConfig.simulated_latency
    device: str = "auto"
    conf: float = INFERENCE.conf
    imgsz: int = INFERENCE.imgsz
    max_batch: int = 32  # frames per model call, across cameras
    window_s: float = 60.0  # one compliance row per camera per window
    history_minutes: float = 15.0  # the page's compliance chart
    host: str = "127.0.0.1"
    port: int | None = 8010  # the camera grid page and the control API; None: no page
    # Without FACEMASK_API_KEY the control API changes nothing unless this is set (loopback only).
    open_api_on_loopback: bool = False
    # What a camera added over the API may be (the list file is the operator's, and unrestricted)
    # and, when given, the hosts or networks it may be on (comma-separated).
    api_sources: str = "rtsp,rtsps,http,https"
    api_hosts: str = ""
    page_timeout_s: float = 10.0  # a silent connection to the page or API is closed after this
    reload_s: float = 1.0  # how often the camera list is looked at for changes
    reader_cpus: float = 0.1  # Ray CPUs reserved per camera (about one 1080p15 decode)
    # Cameras read by one reader process: one Ray call brings all their frames (watch.groups).
    cameras_per_reader: int = 8
    fast_decode: bool = False  # skip H.264's deblocking filter: 12-26% less decoding CPU here
    detector_cpus: float = 1.0
    detector_gpus: float = 0.0
    threads: int | None = None  # CPU inference threads of the detector
    max_seconds: float | None = None
    tracking_uri: str = field(kw_only=True)

    def validate(self) -> "WatchConfig":
        if not 0 <= self.conf <= 1:
            raise ConfigError(f"--conf {self.conf}: must be between 0 and 1")
        if self.backend not in ("pt", "onnx", "simulated-gpu"):
            raise ConfigError(f"--backend {self.backend!r}: choose pt, onnx or simulated-gpu")
        if self.window_s <= 0 or self.history_minutes <= 0 or self.reload_s <= 0:
            raise ConfigError("--window-s, --history-minutes and --reload-s must be positive")
        if self.cameras_per_reader < 1:
            raise ConfigError(f"--cameras-per-reader {self.cameras_per_reader}: must be at least 1")
        if self.max_batch < 1 or self.imgsz < 32:
            raise ConfigError("--max-batch must be at least 1 and --imgsz at least 32")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError("--max-seconds must be positive")
        if self.reader_cpus < 0 or self.detector_cpus < 0 or self.detector_gpus < 0:
            raise ConfigError("--reader-cpus, --detector-cpus and --detector-gpus cannot be negative")
        if self.open_api_on_loopback and self.host not in LOOPBACK_HOSTS:
            raise ConfigError(
                f"--open-api-on-loopback with --host {self.host}: the API opens without a key on loopback only; "
                "set FACEMASK_API_KEY to serve it on other addresses"
            )
        if self.page_timeout_s <= 0:
            raise ConfigError("--page-timeout-s must be positive")
        return self
