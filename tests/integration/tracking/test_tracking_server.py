"""The `mlflow server`s facemask starts run without MLflow's job runner: its huey consumers poll
all the time (about a quarter of a core each on 2 cores), taking CPU from the trials training
beside a study's server, and facemask submits no MLflow jobs."""

from __future__ import annotations

import psutil
import pytest

from facemask.tracking.server import study_tracking_uri

pytestmark = pytest.mark.integration


def listening_server(uri: str) -> psutil.Process:
    """The `mlflow server` process listening on the URI's port."""
    port = int(uri.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            process = psutil.Process(conn.pid)
            # uvicorn's worker listens; the `mlflow server` command that started it is its parent
            while process.parent() is not None and "mlflow" in " ".join(process.parent().cmdline()):
                process = process.parent()
            return process
    raise AssertionError(f"nothing listens on {uri}")


def job_runners(server: psutil.Process) -> list[str]:
    tree = [server, *server.children(recursive=True)]
    return [
        " ".join(p.cmdline())[:120]
        for p in tree
        if "huey" in " ".join(p.cmdline()) or "_job_runner" in " ".join(p.cmdline())
    ]


def test_a_studys_server_and_the_tests_server_run_without_mlflows_job_runner(tmp_path, mlflow_server):
    with study_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}") as served:
        server = listening_server(served)
        assert "server" in server.cmdline(), server.cmdline()
        assert job_runners(server) == []
    assert job_runners(listening_server(mlflow_server.uri)) == []
