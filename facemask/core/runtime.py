"""Process set-up shared by every entry point: Ultralytics offline, devices, Ray, ports, the git commit.

A leaf. Nothing here runs at import: the CLI, `jobs/*` and Serve replicas call these
functions, library code never calls `init_ray`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from facemask.core.errors import ConfigError, RayStartFailed
from facemask.core.lifecycle import descendants, end_processes, handle_stop_signals, process_name, stopped_by
from facemask.core.ports import bindable, free_port

HOME_ENV = "FACEMASK_HOME"
# Set by Ray in the driver process of `ray job submit` (the job's config: runtime env, metadata).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"

# Ray Serve's throughput settings: user code and router on the replica's own event loop
# (no thread hops per request) and buffered request logs. Serve's logs (a line per request
# among them) go to its files under the session's logs/serve/ only, not also to stderr, which
# Ray's log monitor tails and ships to the driver at a cost per request. What each setting
# saved is measured in docs/performance.md. Set for our replicas; `init_ray(serving=True)`
# sets them for the proxy and the controller.
SERVE_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
}
# Serve's proxy loads facemask.serving.proxy_guard from this node setting: a request its replica died
# holding is sent again, a JSON 503 when no replica runs, bounds on slow and large requests.
# Serve's controller restarts a proxy after three failed health checks in a row, one check per
# period: with Ray's default period a killed proxy leaves its port refusing connections for
# three periods; a short one brings the first answer back about when the new proxy has
# started (docs/reliability.md has both). Read when a node starts; `init_ray(serving=True)`
# sets them for a cluster it starts.
PROXY_ENV = {
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "facemask.serving.proxy_guard.middlewares",
    "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "0.5",
}
# With HAProxy as the ingress the guard is not in the path, so HAProxy resends instead: a
# request whose replica closed without an answer goes once more to another replica
# (inference has no side effects). Ray's default resends only failed connects, which drops
# the connections a killed replica held (docs/reliability.md). HAProxy can
# resend only a request still whole in its buffer: 256 KiB holds camera frames and the
# dataset's photos (16 KiB, Ray's default, holds neither), and 1,024 connections keep the
# worst case at 2 buffers x 1,024 = 512 MiB. A stopping replica stays open 2 s, not Ray's 30 s
# meant for an outside load balancer: Serve's own HAProxy drops it at its next reload and
# resends refused connections, and with 30 s `facemask serve` stopped slowly on SIGTERM and
# crashed doing it. Read when the node starts.
HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response",
    "RAY_SERVE_HAPROXY_RETRIES": "1",
    "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": str(256 * 1024),
    "RAY_SERVE_HAPROXY_MAXCONN": "1024",
}


def cache_dir(name: str) -> Path:
    """~/.cache/facemask/<name> (XDG_CACHE_HOME respected): what facemask keeps and can rebuild."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "facemask" / name


def ultralytics_env() -> Path:
    """Keep Ultralytics' settings in a folder of ours and stop it from installing packages.

    Sets (only where unset) YOLO_CONFIG_DIR (under ~/.cache/facemask) and
    YOLO_AUTOINSTALL=false, and puts a local font where Ultralytics looks for Arial so
    plots never try a download. It leaves YOLO_OFFLINE alone: a pretrained name is checked
    by `train.resolve_model_source`, which fails in one line when offline. Must run before
    `import ultralytics` to take effect.
    """
    config = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir("ultralytics"))))
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


def cpus_given() -> int:
    """The CPUs this process was given: Ray's assignment inside a Ray task or actor (a Tune trial,
    a Ray Train worker), else every core this process may run on. At least 1.

    Training sizes torch's threads to it: Ultralytics sets them to cores - 1 (one of two cores
    here), and to the whole node inside a Ray worker that was given two of its sixty-four."""
    ray = sys.modules.get("ray")  # not imported for it: a plain run never started Ray
    if ray is not None and ray.is_initialized():
        try:
            assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
        except AssertionError:  # Ray's answer in a driver (`facemask train` after ray.init): no grant
            assigned = None
        if assigned:  # a driver is given the machine
            return max(1, int(assigned))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS: no affinity, every core
        return max(1, os.cpu_count() or 1)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot, all cores and every process
    (/proc/stat's first line; NaN where there is none). Two readings over a span, divided by
    its wall time, give the cores kept busy: what the benchmarks and the suite report."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return float("nan")
    # user nice system idle iowait irq softirq steal: all but idle and iowait are work.
    ticks = [int(value) for value in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def lowest_priority_thread() -> None:
    """Lower the calling thread alone to the lowest CPU priority (Linux gives each thread its own
    nice value, and the threads it starts inherit it). For background work beside a real-time
    loop (a clip encoded, a sample written): it gets the CPU the loop leaves, and when the loop
    needs every core it falls behind, its bounded queue fills and it drops, counted."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


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


def ensure_dir(path: str | Path) -> Path:
    """`path`, created with its parents if missing: every first write into a folder that may
    not exist yet (the results base on a fresh machine, a store's folder) goes through here."""
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_path(path: str | Path) -> Path:
    """An absolute path as given; a relative one against `results_base()`."""
    path = Path(path).expanduser()
    return path.resolve() if path.is_absolute() else (results_base() / path).resolve()


def where_relative(path: str | Path) -> str:
    """For error messages: how a relative `path` was resolved, when that is not the working directory."""
    if Path(path).expanduser().is_absolute() or results_base() == Path.cwd().resolve():
        return ""
    return (
        f" (relative paths resolve against {results_base()}: {HOME_ENV}, or ~/facemask inside a Ray job; "
        "pass an absolute path to read elsewhere)"
    )


def resolve_device(device: str) -> str:
    """`auto` -> `0` when CUDA is present, else `cpu`; anything else passes through."""
    if device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


# Emulating a GPU cluster on a machine without CUDA (tests, capacity rehearsals): Ray still
# schedules GPU requests, and a process it gave a GPU computes on the CPU instead of failing.
GPU_AS_CPU_ENV = "FACEMASK_GPU_AS_CPU"


def gpu_as_cpu() -> bool:
    """True where FACEMASK_GPU_AS_CPU=1 and torch sees no CUDA: a process given a GPU computes on the CPU."""
    import torch

    return os.environ.get(GPU_AS_CPU_ENV) == "1" and not torch.cuda.is_available()


def check_given_gpus(who: str) -> list[str]:
    """The GPUs Ray gave this process (CUDA_VISIBLE_DEVICES), refused in one line when torch sees
    no CUDA device here: a trial or replica given a GPU must not train or serve on the CPU unseen.
    With FACEMASK_GPU_AS_CPU=1 the CPU is used instead, and said so."""
    import ray
    import torch

    ids = [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else []
    if not ids or torch.cuda.is_available():
        return ids
    if gpu_as_cpu():
        logging.getLogger("facemask.core.runtime").warning(
            "%s: GPU %s given by Ray, computing on the CPU (%s=1)", who, ids, GPU_AS_CPU_ENV
        )
        return ids
    raise ConfigError(
        f"{who} was given GPU {','.join(ids)} by Ray on {socket.gethostname()}, but torch {torch.__version__} sees no "
        "CUDA device there: install a CUDA build of torch on the GPU nodes, or ask for no GPU (--gpus-per-trial 0, "
        "num_gpus: 0)"
    )


def git_commit() -> str | None:
    """The commit of the facemask checkout this runs from, or None (an installed package, no git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
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


def node_env(ingress: str) -> dict[str, str]:
    """What a Ray node must be started with for Serve to run `ingress` (haproxy or proxy) as
    `facemask serve` does: Serve reads these when the node starts, never later."""
    env = {**SERVE_ENV, **PROXY_ENV}
    return env | haproxy_env() if ingress == "haproxy" else env


# Serve starts the HAProxy binary this names: facemask's (facemask.serving.haproxy_guard), installed
# with the package as a script, gives the API's JSON errors where HAProxy answers by itself.
HAPROXY_BINARY_ENV, HAPROXY_SCRIPT = "RAY_SERVE_HAPROXY_BINARY_PATH", "facemask-haproxy"


def haproxy_env() -> dict[str, str]:
    """HAPROXY_ENV, and HAProxy started as `facemask-haproxy` where it is installed."""
    script = haproxy_script_path()
    return HAPROXY_ENV | ({HAPROXY_BINARY_ENV: script} if script else {})


def haproxy_script_path() -> str | None:
    """The absolute path of `facemask-haproxy` beside this Python, else on PATH; None if not installed."""
    beside = Path(sys.executable).with_name(HAPROXY_SCRIPT)
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(HAPROXY_SCRIPT)


def node_ingress() -> str:
    """The ingress Serve runs on this machine's node of the connected cluster: "haproxy" when
    that node's Ray was started with RAY_SERVE_ENABLE_HA_PROXY=1, else "proxy". A task sees
    the environment its node was started with, which a driver joining the cluster cannot change."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def read() -> str | None:
        return os.environ.get("RAY_SERVE_ENABLE_HA_PROXY")

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return "haproxy" if ray.get(read.options(scheduling_strategy=here).remote(), timeout=120) == "1" else "proxy"


def init_ray(serving: bool = False, ingress: str = "proxy", torch: bool = True, metrics: bool = False) -> None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`), else start a local one.

    serving: a local cluster started here also gets Serve's throughput settings and the proxy
    guard (PROXY_ENV; its proxy inherits them; replicas get SERVE_ENV from the deployments
    either way). ingress "haproxy":
    Serve puts HAProxy in front of the replicas' own HTTP servers instead of its Python
    proxy (HAPROXY_ENV); Serve reads that when it starts, so a cluster must be started with
    those settings already. torch=False: this process will not run a model
    (data preparation), so it skips the two-second torch import that guards against the
    fault below. metrics: a local cluster started here exports metrics on METRICS_PORT while it
    is free, as a serving one does (`facemask watch`).
    """
    if serving:
        for key, value in {**SERVE_ENV, **PROXY_ENV}.items():
            os.environ.setdefault(key, value)
        if ingress == "haproxy":
            for key, value in haproxy_env().items():
                os.environ.setdefault(key, value)
            os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
            # HAProxy's stats page and metrics listen on fixed ports (8404, 9101) by default: a second
            # endpoint on this machine (or a HAProxy outliving its Serve) made HAProxy refuse to start.
            # The metrics keep their documented port while it is free; `facemask serve` prints it.
            os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
            os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port(HAPROXY_METRICS_PORT)))
            # Behind HAProxy, Serve also runs a Python proxy for scale-from-zero on a fixed port (8500):
            # a second such endpoint on this machine found it taken and never came up.
            os.environ.setdefault("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", str(free_port()))
    # Seen under `ray job submit` here: once ray.init() has run, importing torch can abort
    # with "oneMKL FATAL ERROR: Cannot load libtorch_cpu.so". Loading torch first avoids it.
    if torch:
        import torch  # noqa: F401
    import ray

    if not ray.is_initialized():
        try:
            _start_or_join_ray(export_metrics=serving or metrics)
        except SystemExit as exc:
            if exc.code != signal.SIGTERM:
                raise
            # SIGTERM while Ray was starting met Ray's own handler (`sys.exit(15)`): stop as from ours.
            stopped_by(signal.SIGTERM)
            raise KeyboardInterrupt from None
        handle_stop_signals()


# How many times a command starts its local Ray when the node misses Ray's fixed 30 s.
LOCAL_RAY_TRIES = 2


def _start_or_join_ray(export_metrics: bool) -> None:
    """`ray.init()`; where it starts a local node that misses Ray's fixed 30 s to register, stop
    what that try started and try once more before giving up with RayStartFailed, which says why.

    A node whose metrics port is taken never registers: two commands starting together on one
    machine both found the documented port free (seen in CI: a serving benchmark beside a test's
    camera watch). Each try chooses the port anew, so the second gets another one."""
    import ray

    from facemask.compat.ray import (
        local_ray_in_its_own_process_group,
        metrics_port_option,
        node_start_failure,
        node_start_timed_out,
    )

    log = logging.getLogger(__name__)
    for attempt in range(1, LOCAL_RAY_TRIES + 1):
        before = descendants()
        # A node started here exports Ray's and the app's metrics on the documented port while it is free.
        port = free_port(METRICS_PORT) if export_metrics else None
        export = metrics_port_option(port) if port else {}
        try:
            with local_ray_in_its_own_process_group():  # a stop sent to our group stops Ray in order
                ray.init(
                    address=os.environ.get("RAY_ADDRESS") or None,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=True,
                    **export,
                )
            return
        except Exception as exc:
            if not node_start_timed_out(exc):
                raise
            started = descendants() - before
            why = node_start_failure({process_name(pid) for pid in started})
            end_processes(started)  # the GCS, raylet and reaper this try left; the next try starts its own
            if port and not bindable(port):
                why += f"; its metrics port {port}, free when chosen, is held by another process"
            if attempt == LOCAL_RAY_TRIES:
                raise RayStartFailed(busy_machine_note(why, attempt)) from None
            log.warning("the local Ray's node did not register in Ray's fixed 30 s (%s); starting it again", why)


def busy_machine_note(why: str, tries: int) -> str:
    """What a command says when its local Ray's node did not register in Ray's fixed 30 s in `tries`."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    why = f"load {load:.1f} on {os.cpu_count()} cores, {why}"
    return (
        f"the local Ray did not start: its node did not register within Ray's fixed 30 s in {tries} "
        f"{'try' if tries == 1 else 'tries'} ({why}). Run the command again when the machine is quieter, or "
        "start Ray once (`ray start --head`) and run commands with RAY_ADDRESS=auto so that each "
        "joins it instead of starting its own"
    )


# Where Prometheus scrapes a node: Ray's and the app's metrics (KubeRay's `metrics` port), and
# HAProxy's (Ray's default). docs/operating.md.
METRICS_PORT, HAPROXY_METRICS_PORT = 8080, 9101


def metrics_endpoints(ingress: str) -> list[str]:
    """The URLs Prometheus scrapes for this cluster's endpoint: each alive node's metrics (Ray's,
    Serve's and the app's), and this node's HAProxy when it is the ingress."""
    import ray

    urls = [
        f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        for node in ray.nodes()
        if node.get("Alive") and node.get("MetricsExportPort")
    ]
    if ingress == "haproxy":
        port = os.environ.get("RAY_SERVE_HAPROXY_METRICS_PORT", str(HAPROXY_METRICS_PORT))
        urls.append(f"http://127.0.0.1:{port}/metrics")
    return urls
