"""Ray's private parts the platform reads: whether the local cluster this process started is
still alive, the process group it starts in, the error of a local node that did not start in
time and where its logs are, Serve's controller and its replica table, whether this process is a
Serve replica, the option that fixes a local node's metrics port, and the lines of the HAProxy
configuration Serve writes that give its own answers. None of them has a public equivalent in Ray 2.60
(`serve.status()` gives neither the replicas' actor names nor their states per route, which the
proxy guard matches against the live actors; `ray start` has --metrics-export-port, `ray.init`
only `_metrics_export_port`; HAProxy's error files and its answer outside every route are fixed
in Serve's template, `ray.serve._private.haproxy_templates`; `ray.init()` raises a bare
Exception when its node does not register in time, and its default temp folder is in
`ray._common.utils`)."""

from __future__ import annotations

import contextlib
import re

from facemask.compat import require

CHECKED = ("ray", "2.60.0", "2.61")
VERSION = require(*CHECKED, __name__)


def local_core_died() -> bool:
    """True when this process started a local Ray whose raylet or GCS process has exited; False
    when it joined a cluster (nothing of it runs here) or started none."""
    import ray._private.worker

    node = ray._private.worker._global_node
    processes = (node.all_processes or {}) if node is not None else {}
    core = [info.process for kind in ("raylet", "gcs_server") for info in processes.get(kind, [])]
    return any(proc.poll() is not None for proc in core)


# `ray.init()` waits a fixed 30 s (`raylet_start_wait_time_s` in ray._private.node.Node, no
# setting) for the raylet it started to register with the GCS, then raises a bare Exception.
NODE_START_TIMED_OUT = "The current node timed out during startup"


def node_start_timed_out(exc: BaseException) -> bool:
    """Whether `exc` is `ray.init()` giving up on its local node (a busy machine, not a bug)."""
    return type(exc) is Exception and NODE_START_TIMED_OUT in str(exc)


# An error or fatal line of Ray's C++ logs: "[2026-12-08 00:43:30,123 E 6466 6466] raylet.cc:..."
CORE_LOG_ERROR = re.compile(r"^\[[^\]]* [EF] \d+ \d+\]")


def node_start_failure(running: set[str]) -> str:
    """Why a local node missed its 30 s, as far as its processes and logs tell: whether its GCS and
    raylet were among the processes `running` (their kernel names) or had exited, their last error
    lines, and where the session's logs are."""
    gone = [name for name in ("gcs_server", "raylet") if name not in running]
    state = f"its {' and '.join(gone)} had exited" if gone else "its GCS and raylet still starting"
    errors = []
    logs = local_session_logs()
    for name in ("gcs_server.out", "raylet.out", "raylet.err"):
        with contextlib.suppress(OSError):
            lines = (logs / name).read_text(errors="replace").splitlines()
            errors += [f"{name}: {line[:240]}" for line in lines if CORE_LOG_ERROR.match(line)][-2:]
    where = f"; last errors: {' | '.join(errors)}" if errors else ""
    return f"{state}{where}; logs in {logs}"


def local_session_logs():
    """The logs folder of the newest local Ray session: under RAY_TMPDIR's `ray`, else /tmp/ray
    (`get_default_ray_temp_dir`, what `ray.init()` uses when given no `_temp_dir`)."""
    from pathlib import Path

    from ray._common.utils import get_default_ray_temp_dir

    return Path(get_default_ray_temp_dir()) / "session_latest" / "logs"


@contextlib.contextmanager
def local_ray_in_its_own_process_group():
    """While it is open, the processes `ray.init()` starts (GCS, raylet and, below the raylet,
    every worker) start in a process group of their own, as Ray does on Windows.

    Why: in this process's group, a signal to the group (`kill -- -PGID`) ends the local Ray
    with the command, and the driver's core worker then ends the process with status 1 at its
    next object-store call ("The connection to the plasma store is failed. Terminate the
    process.") before the command's own handler can stop in order and exit 143. Seen under
    load in 3 of 6 stops of `facemask predict --engine ray`. In a group of their own they get
    only what the command sends them: Ray's orderly shutdown. A command killed outright still
    takes them with it: Ray starts each with PR_SET_PDEATHSIG (kernel fate sharing), and where
    the kernel lacks it Ray relies on its reaper, which needs the shared group, so nothing
    changes there.
    """
    import ray._private.services as services
    import ray._private.utils as utils

    if not utils.detect_fate_sharing_support() or not hasattr(services, "ConsolePopen"):
        yield
        return
    original = services.ConsolePopen

    class OwnGroupPopen(original):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("process_group", 0)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnGroupPopen
    try:
        yield
    finally:
        services.ConsolePopen = original


def serve_controller():
    """The handle of Serve's controller actor (raises ValueError while there is none)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)


def serve_instance_details(controller):
    """An ObjectRef of the controller's replica table: applications, deployments, each replica's
    `actor_name` and `state` (ServeInstanceDetails as a dict)."""
    return controller.get_serve_instance_details.remote()


def in_serve_replica() -> bool:
    """True in a Serve replica's process (it has a replica context), false in Serve's proxy."""
    from ray.serve.context import _get_internal_replica_context

    return _get_internal_replica_context() is not None


def metrics_port_option(port: int) -> dict:
    """`ray.init`'s keyword for the Prometheus port of the node it starts (`_metrics_export_port`,
    listed in its docstring)."""
    return {"_metrics_export_port": port}


# The lines of Serve's HAProxy template (HAPROXY_CONFIG_TEMPLATE) that answer for HAProxy itself:
# its error files, which Serve points at one plain-text 500 for 502, 503 and 504, and the
# default backend's plain-text 404 for a path outside every route.
HAPROXY_ERRORFILE = re.compile(r"^(?P<indent>[ \t]*)errorfile (?P<status>50[234]) \S+[ \t]*$", re.M)
HAPROXY_NOT_FOUND = re.compile(
    r"^(?P<indent>[ \t]*)http-request return status 404 content-type text/plain "
    r"lf-string \"Path '%\[path\]' not found\.[^\n]*$",
    re.M,
)
HAPROXY_ROUTE = re.compile(r"^[ \t]*use_backend ", re.M)


def haproxy_config_answers(config: str, error_files: dict[int, str], not_found: str, no_routes: str) -> str:
    """Serve's HAProxy configuration with HAProxy's own answers replaced: `error_files` by status
    (502, 503, 504: a whole HTTP answer each, on disk), and the answer to a path outside every
    route: `not_found` while the configuration has routes, `no_routes` while it has none (an
    HAProxy started again before Serve gave it its routes). Both are `http-request return`
    arguments. Raises ValueError when a line it replaces is not in `config`."""
    if len(HAPROXY_ERRORFILE.findall(config)) != 3 or len(HAPROXY_NOT_FOUND.findall(config)) != 1:
        raise ValueError("Serve's HAProxy configuration no longer has the error files and 404 line checked for")
    config = HAPROXY_ERRORFILE.sub(
        lambda m: f"{m['indent']}errorfile {m['status']} {error_files[int(m['status'])]}", config
    )
    answer = not_found if HAPROXY_ROUTE.search(config) else no_routes
    return HAPROXY_NOT_FOUND.sub(lambda m: f"{m['indent']}http-request return {answer}", config)
