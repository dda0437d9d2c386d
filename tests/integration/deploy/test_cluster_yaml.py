"""cluster.yaml's commands run here as the Ray autoscaler runs them on a node: each one in
`bash --login -c -i "source ~/.bashrc; export OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore && (CMD)"`
(ray/autoscaler/_private/command_runner.py, `_with_interactive`), in a sandbox HOME per node
that holds the file_mounts, worker start commands prefixed with `export RAY_HEAD_IP=...;`
(`with_head_node_ip`), against a real PostgreSQL as the MLflow store.

Stubbed, and nothing else: `pip` (the package is already installed here; the stub checks the
extras it is asked for exist), `hostname -I` (the node's private address, loopback here), S3 (a
folder), the MLflow port (a free one), and `ray` in the start commands (`ray stop` ends every
Ray process of the machine; the stub records what `ray start` would run with). Not run here:
EC2, IAM and the autoscaler itself."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from facemask.core.runtime import free_port
from tests.kuberay import SECRET, on_this_machine
from tests.services import PostgresServer, postgres_bin, wait_until

pytestmark = [
    pytest.mark.heavy(reason="cluster.yaml's head and worker started side by side, with their MLflow server"),
    pytest.mark.integration,
    pytest.mark.skipif(postgres_bin() is None, reason="Debian's postgresql is not installed (.ci/run installs it)"),
]
ROOT = Path(__file__).resolve().parents[3]
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())

STUBS = {
    # Records the extras asked for, and fails on one pyproject.toml does not define.
    "pip": """#!/bin/bash
echo "pip $*" >> "$HOME/stub-calls.log"
for extras in $(echo "$*" | grep -o '\\[[a-z,]*\\]' | tr -d '[]' | tr ',' ' '); do
  grep -q "^$extras = " "{root}/pyproject.toml" || { echo "no extra $extras in pyproject.toml" >&2; exit 1; }
done
""",
    "hostname": """#!/bin/bash
if [ "$1" = "-I" ]; then echo "127.0.0.1 "; else exec /bin/hostname "$@"; fi
""",
    "ray": """#!/bin/bash
echo "ray $*" >> "$HOME/stub-calls.log"
if [ "$1" = "start" ]; then env > "$HOME/ray-start.env"; fi
""",
}


class Node:
    """One machine of the cluster: a HOME with the file_mounts, and the commands run in it."""

    def __init__(self, root: Path, name: str, env_file: Path, port: int) -> None:
        self.home = root / name
        (self.home / ".ray").mkdir(parents=True)
        (self.home / ".facemask").mkdir()
        stubs = root / "stubs"
        stubs.mkdir(exist_ok=True)
        for tool, text in STUBS.items():
            (stubs / tool).write_text(text.replace("{root}", str(ROOT)))
            (stubs / tool).chmod(0o755)
        mounts = {"/home/ray/facemask": ROOT, "/home/ray/.ray/auth_token": Path.home() / ".ray" / "auth_token"}
        mounts["/home/ray/.facemask/cluster.env"] = env_file
        for inside, source in CLUSTER["file_mounts"].items():
            assert inside in mounts, f"a file_mount this test does not provide: {inside}: {source}"
        (self.home / "facemask").symlink_to(ROOT)
        (self.home / ".ray" / "auth_token").write_text("a-test-ray-token")
        (self.home / ".facemask" / "cluster.env").write_text(env_file.read_text())
        self.paths = {"/home/ray": str(self.home)}
        self.swap = {"--port 5000": f"--port {port}", ":5000": f":{port}"}
        self.env = {
            "HOME": str(self.home),
            "PATH": f"{stubs}:{Path(sys.executable).parent}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
        }
        # The image's own PATH, which a login shell's /etc/profile resets (Ray's image puts its
        # Python first the same way); the stubs before it.
        (self.home / ".bashrc").write_text(f"export PATH={self.env['PATH']}\n")
        self.sessions: list[int] = []

    def run(self, commands: list[str], prefix: str = "") -> list[subprocess.CompletedProcess]:
        """Each command as the autoscaler runs it; stops at the first that fails, as `ray up` does."""
        done = []
        for command in commands:
            cmd = prefix + on_this_machine(command, self.paths, self.swap)
            wrapped = f"source ~/.bashrc; export OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore && ({cmd})"
            proc = subprocess.Popen(
                ["bash", "--login", "-c", "-i", wrapped],
                env=self.env,
                cwd=self.home,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            self.sessions.append(proc.pid)
            out = proc.communicate(timeout=300)[0]
            done.append(subprocess.CompletedProcess(cmd, proc.returncode, out))
            if proc.returncode != 0:
                break
        return done

    def stop(self) -> None:
        """End what the commands left running: the processes of their sessions (MLflow's supervisor,
        under nohup), which stop what they started, and whatever of that outlives them (the server
        has a session of its own)."""
        procs = [p for p in psutil.process_iter() if _in(p, self.sessions)]
        below = []
        for p in procs:
            try:
                below += p.children(recursive=True)
                p.send_signal(signal.SIGTERM)
            except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
                continue
        gone, alive = psutil.wait_procs(procs + below, timeout=30)
        for p in alive:
            p.kill()


def _in(p: psutil.Process, sessions: list[int]) -> bool:
    try:
        return os.getsid(p.pid) in sessions
    except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
        return False


def cluster_env(postgres: PostgresServer, artifacts: Path, **override: str) -> str:
    values = {
        **SECRET,
        "MLFLOW_BACKEND_STORE_URI": postgres.create_database("mlflow"),
        "MLFLOW_AUTH_DATABASE_URI": postgres.create_database("mlflow_auth"),
        "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts),  # the bucket, here a folder
        **override,
    }
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())


def log_a_run(env: dict[str, str], postgres: PostgresServer) -> None:
    """A client built as a trial builds it logs a run to the head's MLflow, which stores it."""
    code = (
        "from facemask.tracking import RunLogger\n"
        "import os\n"
        "run = RunLogger('cluster-yaml', 'from-a-node', tracking_uri=os.environ['MLFLOW_TRACKING_URI'],"
        " system_metrics=False)\n"
        "run.log_metrics({'m': 1.0}, step=1)\n"
        "run.end('FINISHED')\n"
        "assert run.run_id and run.failures == 0, run.failures\n"
        "print(run.run_id)\n"
    )
    logged = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert logged.returncode == 0, logged.stderr[-2000:]
    run_id = logged.stdout.split()[-1]
    assert postgres.psql("mlflow", f"SELECT status FROM runs WHERE run_uuid = '{run_id}'").strip() == "FINISHED"


def listening(node: Node, port: int) -> psutil.Process | None:
    """The process that serves `port`, below the node's supervisor (its server has a session of its own)."""
    supervisors = [p for p in psutil.process_iter(["cmdline"]) if _in(p, node.sessions)]
    supervisors = [p for p in supervisors if "facemask.core.supervisor" in " ".join(p.info["cmdline"] or [])]
    for proc in [child for s in supervisors for child in s.children(recursive=True)]:
        try:
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in proc.net_connections("tcp")):
                return proc
        except psutil.NoSuchProcess:
            continue
    return None


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def failed(results: list[subprocess.CompletedProcess]) -> str:
    last = results[-1]
    return f"{last.args[:300]}\n--> exit {last.returncode}:\n{last.stdout[-3000:]}"


def test_cluster_yaml_starts_mlflow_with_auth_and_gives_every_node_the_secrets(tmp_path):
    postgres = PostgresServer().start()
    port = free_port()
    env_file = tmp_path / "cluster.env"
    env_file.write_text(cluster_env(postgres, tmp_path / "s3"))
    head = Node(tmp_path, "head", env_file, port)
    worker = Node(tmp_path, "worker", env_file, port)
    try:
        ran = head.run(CLUSTER["setup_commands"] + CLUSTER["head_setup_commands"])
        assert all(r.returncode == 0 for r in ran), failed(ran)
        ran = head.run(CLUSTER["head_start_ray_commands"])
        assert all(r.returncode == 0 for r in ran), failed(ran)
        ran = worker.run(CLUSTER["setup_commands"])
        assert all(r.returncode == 0 for r in ran), failed(ran)
        ran = worker.run(CLUSTER["worker_start_ray_commands"], prefix="export RAY_HEAD_IP=127.0.0.1; ")
        assert all(r.returncode == 0 for r in ran), failed(ran)

        # The pip stub failed any extra pyproject.toml lacks; the server's own ([server]) was asked for.
        assert "[fetch,server]" in (worker.home / "stub-calls.log").read_text()
        url = f"http://127.0.0.1:{port}"
        for node in (head, worker):
            started = dict(
                line.split("=", 1) for line in (node.home / "ray-start.env").read_text().splitlines() if "=" in line
            )
            calls = (node.home / "stub-calls.log").read_text()
            assert re.search(r"^ray start .*--(head|address=127\.0\.0\.1:6379)", calls, re.M), calls
            # What every Ray process on the node inherits from `ray start`: the secrets and the server.
            for key in ("FACEMASK_API_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                assert started.get(key) == SECRET[key], (node.home.name, key)
            assert started["RAY_AUTH_MODE"] == "token" and started["MLFLOW_TRACKING_URI"] == url, node.home.name
            # ... and nothing a Ray process does not need: the stores and the bucket are the server's.
            held = {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI", "MLFLOW_ARTIFACTS_DESTINATION"}
            assert not held & set(started), (node.home.name, sorted(held & set(started)))

            # A client on the node, built as a trial builds it, logs to the head's MLflow.
            log_a_run(started, postgres)
        # Without the login, nothing.
        assert httpx.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401
        assert postgres.psql("mlflow_auth", "SELECT username FROM users").split() == [
            SECRET["MLFLOW_TRACKING_USERNAME"]
        ]
        # The server is killed outright (the OOM killer picks the biggest process): its supervisor
        # starts it again, and a node logs once more. Its log says what happened.
        killed = listening(head, port)
        killed.kill()
        back = lambda: (p := listening(head, port)) is not None and p.pid != killed.pid and healthy(url)  # noqa: E731
        wait_until(back, 120, "the head's MLflow server started again by its supervisor")
        log_a_run(started, postgres)
        assert "[supervisor] mlflow ended with status" in (head.home / "mlflow" / "server.log").read_text()
    finally:
        head.stop()
        worker.stop()
        postgres.stop()


def test_cluster_yaml_refuses_a_node_with_a_placeholder_left(tmp_path):
    env_file = tmp_path / "cluster.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**SECRET, "FACEMASK_API_KEY": "CHANGE-ME-key"}.items()))
    node = Node(tmp_path, "worker", env_file, free_port())
    try:
        ran = node.run(CLUSTER["setup_commands"])
    finally:
        node.stop()
    assert ran[-1].returncode == 1 and len(ran) == 1, failed(ran)
    assert "still holds a CHANGE-ME placeholder" in ran[-1].stdout
