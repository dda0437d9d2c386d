"""Start and stop real services for tests: an `mlflow server` on loopback.

Each service runs in its own process group and is stopped by that group's id only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import pytest

from facemask.core.lifecycle import stop_process_group
from facemask.core.runtime import PROXY_ENV, free_port
from facemask.serving.proxy_guard import ENV_PREFIX
from facemask.tracking.server import mlflow_server_command, mlflow_server_env

# The test endpoint's limits: a small max_pending so that the overload test can fill it with a few dozen requests.
LIMITS = {"max_body_mb": 1.0, "max_pixels": 4_000_000, "max_pending": 6, "body_timeout_s": 2.0}
DEPLOYMENT = {"max_ongoing_requests": 64, "max_queued_requests": 64, "ray_actor_options": {"num_cpus": 0.5}}
# The session cluster's Serve proxy runs the guard with short bounds, so tests reach them quickly.
PROXY = {"body_timeout_s": 2.0, "header_timeout_s": 2.0, "max_header_kb": 16, "max_connections": 100}
PROXY_TEST_ENV = {**PROXY_ENV, **{ENV_PREFIX + key.upper(): str(value) for key, value in PROXY.items()}}
API_KEY = "test-key-0123456789"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def tiny_training(data: Path, project: Path, **options):
    """The TrainConfig of the smallest real training: yolo26n from its yaml at 160, batch 8, 1 epoch, CPU, no plots,
    tracked in the store the test's environment names (the `tracking` fixture's server)."""
    from facemask.core.settings import TrainConfig
    from facemask.tracking import default_tracking_uri

    base = {"model": "yolo26n.yaml", "epochs": 1, "imgsz": 160, "batch": 8, "device": "cpu", "workers": 0}
    base["tracking_uri"] = default_tracking_uri()
    return TrainConfig(**{"data": data, "project": project, **base, "plots": False, **options})


def study_args(data: Path, space: Path, experiment: str, **options) -> list[str]:
    """Arguments of `facemask tune` / jobs/tune.py for a small study: yolo26n at 160, one CPU a trial,
    minimising cls_loss (it moves from the first epoch); each option adds `--name value`
    (underscores to dashes; True: the bare flag)."""
    args = ["--data", str(data), "--weights", "yolo26n.yaml", "--imgsz", "160", "--cpus-per-trial", "1"]
    args += ["--search-space", str(space), "--metric", "cls_loss", "--mode", "min", "--experiment", experiment]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    interval: float = 0.5,
) -> Any:
    """Poll `condition` until it returns something true, and return that. Fail, naming `what`
    was awaited, at the deadline or as soon as `proc` (the process that should bring it) ends."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        tail = log.read_text(errors="replace")[-3000:] if log is not None and log.is_file() else ""
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command ended ({proc.returncode}) before {what}: {tail}")
        if time.monotonic() >= deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s: {tail}")
        time.sleep(interval)


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class MlflowServer:
    """`mlflow server` with a sqlite backend and served artifacts, one worker."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> "MlflowServer":
        log = open(self.root / "server.log", "ab")
        store, artifacts = f"sqlite:///{self.root / 'mlflow.db'}", str(self.root / "artifacts")
        self.proc = subprocess.Popen(
            mlflow_server_command(self.port, store, "--artifacts-destination", artifacts),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.root,
            env=mlflow_server_env(),
        )
        if wait:
            self.wait()
        return self

    def wait(self) -> None:
        wait_http(f"{self.uri}/health", proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, sig, grace_s=20)


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server programs (package postgresql; .ci/run installs it), if installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class PostgresServer:
    """A real PostgreSQL on loopback in a folder of its own, trust auth for its one user; as root it
    runs as Debian's `postgres` user (initdb refuses root). Stopped by its process group."""

    def __init__(self, user: str = "facemask") -> None:
        import tempfile

        self.bin = postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="fm-pg-", dir="/tmp"))  # other users must reach it
        self.port = free_port()
        self.user = user
        self.proc: subprocess.Popen | None = None

    def _as_owner(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.getuid() == 0 else list(args)

    def start(self) -> "PostgresServer":
        if os.getuid() == 0:
            shutil.chown(self.root, "postgres")
        data = self.root / "data"
        subprocess.run(
            self._as_owner(str(self.bin / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust"),
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.proc = subprocess.Popen(
            self._as_owner(
                str(self.bin / "postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.root),
            ),
            stdout=open(self.root / "server.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_port(self.port, proc=self.proc)
        return self

    def create_database(self, name: str) -> str:
        """A new database; its SQLAlchemy URI."""
        self.psql("postgres", f"CREATE DATABASE {name}")
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def psql(self, database: str, sql: str) -> str:
        psql = shutil.which("psql") or str(self.bin / "psql")
        command = [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", database, "-tAc", sql]
        wait_until(
            lambda: subprocess.run(command[:-2] + ["-c", "SELECT 1"], capture_output=True).returncode == 0,
            60,
            "PostgreSQL accepting connections",
        )
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, grace_s=20)
        shutil.rmtree(self.root, ignore_errors=True)


class RayCluster:
    """A Ray cluster of real `ray start` nodes on loopback, token auth on, stopped by process group."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = Path(root)
        self.env = env
        self.port = free_port()
        self.dashboard_port = free_port()
        self.procs: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        ray = str(Path(sys.executable).with_name("ray"))
        # A small object store per node: several nodes share this machine's memory.
        # Ports of our own: Ray's fixed defaults (the job agent's 52365) clash with any other Ray on the machine.
        ports = ["--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port())]
        proc = subprocess.Popen(
            [
                ray,
                "start",
                "--block",
                "--node-ip-address",
                "127.0.0.1",
                "--disable-usage-stats",
                "--object-store-memory",
                str(300 * 2**20),
                *ports,
                *args,
            ],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def node_args(
        num_cpus: float | None = None, resources: dict[str, float] | None = None, params: dict[str, str] | None = None
    ) -> list[str]:
        """`ray start` options: CPUs and custom resources, then `params` (rayStartParams) as `--key=value`."""
        import json

        args = [] if num_cpus is None else ["--num-cpus", str(num_cpus)]
        args += [] if resources is None else ["--resources", json.dumps(resources)]
        return args + [f"--{key}={value}" for key, value in (params or {}).items()]

    def start_head(self, env: dict[str, str] | None = None, **node) -> None:
        """The head, with `node_args(**node)` and `env` added to the cluster's environment."""
        # Ray starts a head without authentication when no token exists; never start one like that.
        if self.env.get("RAY_AUTH_MODE") != "token":
            raise RuntimeError("refusing to start a Ray head without token auth: set RAY_AUTH_MODE=token")
        proc = self._start(
            [
                "--head",
                "--port",
                str(self.port),
                *self.node_args(**node),
                "--include-dashboard",
                "true",
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(self.dashboard_port),
                "--temp-dir",
                str(self.root / "head"),
            ],
            "head",
            env,
        )
        wait_port(self.dashboard_port, proc=proc)

    def add_node(self, env: dict[str, str] | None = None, **node) -> None:
        """A worker node joining the head, as `start_head`."""
        self._start(["--address", self.address, *self.node_args(**node)], f"node{len(self.procs)}", env)

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        ray = str(Path(sys.executable).with_name("ray"))

        def alive() -> bool:
            out = subprocess.run(
                [ray, "list", "nodes", "--address", self.address, "--format", "json", "--filter", "state=ALIVE"],
                env=self.env,
                capture_output=True,
                text=True,
            )
            return out.returncode == 0 and out.stdout.count('"node_id"') >= count

        wait_until(alive, timeout, f"{count} alive Ray nodes", interval=1)

    def job(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`ray job ARGS --address <this head's dashboard>`, with the cluster's environment (its token)."""
        ray = str(Path(sys.executable).with_name("ray"))
        command, *rest = args
        return subprocess.run(
            [ray, "job", command, "--address", self.dashboard, *rest],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def submit(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """`ray job submit ARGS` once the head's job agent takes jobs: a head that has just started
        answers "No available agent" until its agent has registered."""
        answered: list[subprocess.CompletedProcess] = []

        def taken() -> bool:
            run = self.job("submit", *args, timeout=timeout)
            answered.append(run)
            return "No available agent to submit job" not in run.stderr

        wait_until(taken, 120, "job agent on the head", interval=1)
        return answered[-1]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        # `ray start --block` took up to 60 s to stop its node on SIGTERM, a minute of every
        # cluster test's teardown; what is left 10 s after the signal is killed (the nodes are the
        # test's own). One deadline for all the nodes: they stop side by side, not one after another.
        deadline = time.monotonic() + 10
        for proc in self.procs:
            stop_process_group(proc, grace_s=max(0.0, deadline - time.monotonic()))


def wait_port(port: int, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch_chromium(playwright, *extra: str):
    """Debian's chromium through Playwright, offline-friendly (no background network)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra])


def assert_last_box_in_its_class_colour(page) -> None:
    """The left edge of the last box the page drew (with an edge at all: an untrained model also
    finds boxes of zero height at the frame's border) is drawn in its class colour somewhere
    along its length. Along it, because later labels and, with many boxes, other boxes' lines
    may cover parts of it; across the line's width, because a line at a fractional position is
    blended with the picture at its outer pixels.
    """
    found = page.evaluate("""() => {
        const drawn = window.lastDrawn, ctx = document.getElementById('canvas').getContext('2d');
        for (let i = drawn.length - 1; i >= 0; i--) {
            const b = drawn[i];
            if (b.x2 - b.x1 < 4 * b.line || b.y2 - b.y1 < 4 * b.line) continue;
            const from = Math.max(0, Math.floor(b.x1 - b.line)), y1 = Math.ceil(b.y1), rows = Math.floor(b.y2) - y1;
            const width = Math.ceil(2 * b.line) + 2, data = ctx.getImageData(from, y1, width, rows).data, out = [];
            for (let k = 0; k < data.length; k += 4) out.push([data[k], data[k + 1], data[k + 2]]);
            return [out, b.color, b];
        }
        return null;
    }""")
    assert found, "no box with an edge was drawn"
    pixels, color, box = found
    want = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    nearest = min(pixels, key=lambda pixel: max(abs(a - b) for a, b in zip(pixel, want)))
    assert max(abs(a - b) for a, b in zip(nearest, want)) <= 40, (nearest, want, box)


def replica_pids(app: str) -> dict[str, int]:
    """Name -> PID of every live replica of `app` (Serve names its replica actors after the app)."""
    import ray

    out = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if f"::{app}#" in actor["name"]:
            try:
                handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
                out[actor["name"]] = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
            except Exception:  # a replica that is going away
                continue
    return out


def wait_for_replicas(app: str, count: int, gone: int | None = None) -> dict[str, int]:
    """Name -> PID of `app`'s replicas once there are `count` of them and none is the process `gone`."""

    def ready() -> dict[str, int] | None:
        now = replica_pids(app)
        return now if len(now) == count and gone not in now.values() else None

    return wait_until(ready, 90, f"{count} live replicas of {app} without PID {gone}", interval=0.5)


@contextmanager
def facemask_serve(weights, tmp_path, *options: str, tracking_uri: str | None = None):
    """`facemask serve` in its own process and session, with its own local Ray, air-gapped:
    (process, URL, log path) once /healthz answers; stopped with Ctrl-C unless it already was.
    weights None: no --model-uri (the simulated accelerator needs none); tracking_uri: the
    registry (default: an empty one of its own)."""
    port, log_path = free_port(), tmp_path / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri or f"sqlite:///{tmp_path / 'none.db'}"}
    env.pop("RAY_ADDRESS", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "facemask.cli", "serve", "--port", str(port)]
            + (["--model-uri", str(weights)] if weights else [])
            + list(options),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/healthz", timeout=180, proc=proc)
            yield proc, url, log_path
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def process_tree(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `root`."""
    import psutil

    found = []
    for child in psutil.Process(root).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append((child.pid, " ".join(child.cmdline())))
    return found
