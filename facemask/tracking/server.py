"""A local `mlflow server` over a sqlite store, for studies whose trials write concurrently."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any, Iterator

from facemask.core.errors import ConfigError
from facemask.core.lifecycle import die_with_parent, stop_process_group
from facemask.core.runtime import free_port
from facemask.tracking.runs import artifact_root, ensure_store, sqlite_path

log = logging.getLogger("facemask.tracking")

# MLflow 3 starts a job runner beside every `mlflow server` (huey consumers for its GenAI jobs)
# that polls all the time: about a quarter of a core per server, measured on 2 cores, taken from
# the trials training beside it. Nothing in facemask submits MLflow jobs, so every server it
# starts (this one, cluster.yaml's, kubernetes/mlflow.yaml's) turns it off with MLflow's switch.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_server_env() -> dict[str, str]:
    """The environment of an `mlflow server` facemask starts: this process's, and SERVER_ENV."""
    return {**os.environ, **SERVER_ENV}


def mlflow_server_command(port: int, backend_store_uri: str, *artifacts: str) -> list[str]:
    """`mlflow server` on loopback `port` over `backend_store_uri`, one worker; its clients' store is
    then `http://127.0.0.1:<port>`. `artifacts` are its artifact options (where they go, whether the
    server serves them)."""
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    return command + ["--workers", "1", "--backend-store-uri", backend_store_uri, *artifacts]


@contextlib.contextmanager
def study_tracking_uri(tracking_uri: str) -> Iterator[str]:
    """A tracking URI that many concurrent trials can write to.

    A sqlite file takes one writer at a time, and parallel trials would meet
    "database is locked". For a sqlite URI this starts an `mlflow server` on loopback
    over that same file for the length of the study (the server is the only writer),
    and stops it, by its own process group, afterwards. Other URIs pass through.
    """
    if not tracking_uri.startswith("sqlite:"):
        yield tracking_uri
        return
    db = sqlite_path(ensure_store(tracking_uri))
    artifacts = artifact_root(tracking_uri)
    port = free_port()
    log_file = open(db.parent / f".mlflow-server-{port}.log", "ab")
    proc = subprocess.Popen(
        mlflow_server_command(port, tracking_uri, "--default-artifact-root", str(artifacts), "--no-serve-artifacts"),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
        env=mlflow_server_env(),
    )
    served = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server for {tracking_uri} exited with {proc.returncode}; see {log_file.name}"
                )
            try:
                with urllib.request.urlopen(f"{served}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mlflow server for {tracking_uri} did not start in 120s; see {log_file.name}")
                time.sleep(0.5)
        log.info("study logs through %s (a server over %s)", served, tracking_uri)
        yield served
    finally:
        stop_process_group(proc)
        log_file.close()


def hosts_elsewhere(nodes: list[dict[str, Any]], here: str) -> list[str]:
    """Addresses of the alive Ray nodes that are not this machine (from `ray.nodes()`)."""
    return sorted({n["NodeManagerAddress"] for n in nodes if n.get("Alive") and n.get("NodeManagerAddress") != here})


def check_tracking_reachable(tracking_uri: str, nodes: list[dict[str, Any]], here: str, who: str = "trials") -> None:
    """Refuse a run whose remote processes could not log: a sqlite store is on this machine only
    (a study even serves it on this node's loopback)."""
    if not tracking_uri.startswith("sqlite:"):
        return
    elsewhere = hosts_elsewhere(nodes, here)
    if elsewhere:
        raise ConfigError(
            f"the cluster has nodes on other machines ({', '.join(elsewhere[:5])}), and the tracking store is on this "
            f"machine ({tracking_uri}), which {who} there cannot reach; set "
            "MLFLOW_TRACKING_URI to a tracking server every node reaches (docs/jobs-and-clusters.md)"
        )
