"""Process set-up shared by every entry point: Ultralytics offline, devices, Ray, ports, the git commit.

A leaf. Nothing here runs at import: the CLI, `jobs/*` and Serve replicas call these
functions, library code never calls `init_ray`.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

HOME_ENV = "FACEMASK_HOME"
# Set by Ray in the driver process of `ray job submit` (the job's config: runtime env, metadata).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"

# Ray Serve's throughput settings: user code and router on the replica's own event loop
# (no thread hops per request) and buffered request logs. On 2 cores they raised
# small-image requests/s by about 30%. Set for our replicas; `init_ray(serving=True)` sets them for the proxy.
SERVE_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}
# Serve's proxy loads facemask.proxy_guard from this node setting: a request its replica died
# holding is sent again, a JSON 503 when no replica runs, bounds on slow and large requests.
# Read when a node starts; `init_ray(serving=True)` sets it for a cluster it starts.
PROXY_ENV = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "facemask.proxy_guard.middlewares"}
# With HAProxy as the ingress the guard is not in the path, so HAProxy resends instead: a
# request whose replica closed without an answer goes once more to another replica
# (inference has no side effects). Ray's default resends only failed connects: 3 dropped
# connections per replica killed under load here, 0-2 with these. HAProxy can
# resend only a request still whole in its buffer: 256 KiB holds camera frames and the
# dataset's photos (16 KiB, Ray's default, holds neither), and 1,024 connections keep the
# worst case at 2 buffers x 1,024 = 512 MiB. Read when the node starts.
HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response",
    "RAY_SERVE_HAPROXY_RETRIES": "1",
    "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": str(256 * 1024),
    "RAY_SERVE_HAPROXY_MAXCONN": "1024",
}


def ultralytics_env() -> Path:
    """Keep Ultralytics' settings in a folder of ours and stop it from installing packages.

    Sets (only where unset) YOLO_CONFIG_DIR (under ~/.cache/facemask) and
    YOLO_AUTOINSTALL=false, and puts a local font where Ultralytics looks for Arial so
    plots never try a download. It leaves YOLO_OFFLINE alone: a pretrained name is checked
    by `train.resolve_model_source`, which fails in one line when offline. Must run before
    `import ultralytics` to take effect.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "facemask" / "ultralytics"
    config = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(cache)))
    config.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    try:
        import matplotlib

        font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        for name in ("Arial.ttf", "Arial.Unicode.ttf"):
            if font.is_file() and not (config / name).exists():
                shutil.copyfile(font, config / name)
    except ImportError:
        pass
    return config


def in_ray_job() -> bool:
    """True in the driver of `ray job submit`, whose working directory is Ray's temporary copy of --working-dir."""
    return RAY_JOB_ENV in os.environ or "/runtime_resources/working_dir_files/" in f"{Path.cwd()}/"


def cluster_connected() -> bool:
    """True when a Ray cluster is already there to use: this process joined one, RAY_ADDRESS
    names one, or this runs inside `ray job submit`. Starting a local cluster is not free
    (about 4 s here), so `--engine auto` counts it against a small input."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return True
    return bool(os.environ.get("RAY_ADDRESS")) or in_ray_job()


def results_home() -> Path:
    """FACEMASK_HOME if set, else ~/facemask: where jobs keep their results."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / "facemask").expanduser().resolve()


def results_base() -> Path:
    """What relative paths and the default MLflow store resolve against.

    The working directory, except inside a Ray job: there it is Ray's temporary copy of
    --working-dir, deleted with the job's package, so results go to `results_home()` instead.
    Setting FACEMASK_HOME makes it the base everywhere.
    """
    if os.environ.get(HOME_ENV) or in_ray_job():
        return results_home()
    return Path.cwd().resolve()


def resolve_path(path: str | Path) -> Path:
    """An absolute path as given; a relative one against `results_base()`."""
    path = Path(path).expanduser()
    return path.resolve() if path.is_absolute() else (results_base() / path).resolve()


def where_relative(path: str | Path) -> str:
    """For error messages: how a relative `path` was resolved, when that is not the working directory."""
    if Path(path).expanduser().is_absolute() or results_base() == Path.cwd().resolve():
        return ""
    return (f" (relative paths resolve against {results_base()}: {HOME_ENV}, or ~/facemask inside a Ray job; "
            "pass an absolute path to read elsewhere)")


def resolve_device(device: str) -> str:
    """`auto` -> `0` when CUDA is present, else `cpu`; anything else passes through."""
    if device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def git_commit() -> str | None:
    """The commit of the facemask checkout this runs from, or None (an installed package, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def configure_runtime() -> None:
    """Process-wide settings for commands that train or track.

    MLflow's client retries a dead server for minutes by default; a training must not
    stall that long on logging, so retries are bounded unless the user set them.
    """
    ultralytics_env()
    # Ultralytics logs to stdout; keep stdout for our results (evaluate --json must parse).
    from ultralytics.utils import LOGGER

    for handler in LOGGER.handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # Tune warns on every snapshot of short trials; the snapshots are wanted (resume), the warning is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # MLflow prints a "View run at <server>" line per run; a study's server is gone after it, so the links mislead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def init_ray(serving: bool = False, ingress: str = "proxy", torch: bool = True) -> None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`), else start a local one.

    serving: a local cluster started here also gets Serve's throughput settings and the proxy
    guard (PROXY_ENV; its proxy inherits them; replicas get SERVE_ENV from the deployments
    either way). ingress "haproxy":
    Serve puts HAProxy in front of the replicas' own HTTP servers instead of its Python
    proxy (HAPROXY_ENV); Serve reads that when it starts, so a cluster must be started with
    those settings already. torch=False: this process will not run a model
    (data preparation), so it skips the two-second torch import that guards against the
    fault below.
    """
    if serving:
        for key, value in {**SERVE_ENV, **PROXY_ENV}.items():
            os.environ.setdefault(key, value)
        if ingress == "haproxy":
            for key, value in HAPROXY_ENV.items():
                os.environ.setdefault(key, value)
            os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    # Seen under `ray job submit` here: once ray.init() has run, importing torch can abort
    # with "oneMKL FATAL ERROR: Cannot load libtorch_cpu.so". Loading torch first avoids it.
    if torch:
        import torch  # noqa: F401
    import ray

    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or None,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens on it on loopback, else any free port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")
