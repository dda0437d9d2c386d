"""A replica's registry lookups under a hostile review (issue item 8), against a real MLflow server
on loopback, one that refuses connections, and one that accepts and never answers: a missing
version is remembered, an outage is a 503 and never a 404, lookups never take the threads model
calls run on, and /models names no address."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from facemask.core.runtime import free_port
from facemask.serving.api_schema import APIError
from facemask.serving.config import AppArgs
from facemask.serving.models import Models

pytestmark = pytest.mark.integration
NAME = "lookup-test-detector"


def catalog(tracking_uri: str) -> Models:
    args = AppArgs.model_validate({"model_uri": f"models:/{NAME}@champion", "tracking_uri": tracking_uri})
    default = SimpleNamespace(info=SimpleNamespace(name=NAME, version="1"))
    holder: dict = {}

    async def load_version(model_id: str):  # the replica's multiplexed loader
        return await holder["models"].version(model_id)

    holder["models"] = Models(args, default, "cpu", load_version)
    return holder["models"]


def lookup(models: Models, model_id: str) -> APIError:
    with pytest.raises(APIError) as refused:
        asyncio.run(models.for_id(model_id))
    return refused.value


@pytest.fixture(scope="module")
def registry(mlflow_server):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri)
    if not client.search_registered_models(f"name='{NAME}'"):
        client.create_registered_model(NAME)
    return mlflow_server.uri


class SilentServer:
    """Accepts connections on loopback and never answers: a registry stuck behind a dead proxy."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.held, self.open = self.sock.getsockname()[1], [], True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.open:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.open = False
        for conn in self.held:
            conn.close()
        self.sock.close()


def test_item_8_a_missing_version_is_looked_up_once_then_answered_from_memory(registry, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    models = catalog(registry)
    first = lookup(models, "99")
    calls = models.registry_calls
    assert first.status == 404 and first.error == "model_not_found" and registry not in first.message
    for _ in range(20):
        again = lookup(models, "99")
        assert again.status == 404 and again.message == first.message
    assert models.registry_calls == calls  # no registry call for the same missing version
    assert lookup(models, "no-such-alias").status == 404


def test_item_8_a_registry_outage_is_a_503_not_a_404_and_models_names_no_address(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    port = free_port()  # nothing listens: connections are refused
    models = catalog(f"http://127.0.0.1:{port}")
    down = lookup(models, "3")
    assert (down.status, down.error) == (503, "registry_unavailable"), (down.status, down.message)
    assert down.headers.get("Retry-After") and str(port) not in down.message
    assert lookup(models, "3").status == 503  # an outage is not remembered as "missing"
    listing = asyncio.run(models.versions())
    assert listing["versions"] == [] and "did not answer" in listing["registry_error"]
    assert "127.0.0.1" not in listing["registry_error"] and str(port) not in listing["registry_error"]


@pytest.mark.whole_machine(reason="model calls must not wait 2 s behind stuck lookups")
def test_item_8_lookups_stuck_on_a_silent_registry_leave_the_model_threads_free(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    silent = SilentServer()
    models = catalog(f"http://127.0.0.1:{silent.port}")

    async def main() -> float:
        # Eight requests name eight versions (more than asyncio's default threads on 2 cores);
        # each lookup hangs on the registry for its 2 s timeout.
        lookups = [asyncio.ensure_future(models.for_id(str(v))) for v in range(2, 10)]
        await asyncio.sleep(0.3)  # deliberate: the lookups are under way
        started = time.monotonic()
        # Model calls run on asyncio's default threads (serving.inference); they must not queue behind lookups.
        await asyncio.gather(*(asyncio.to_thread(time.sleep, 0.05) for _ in range(8)))
        took = time.monotonic() - started
        await asyncio.gather(*lookups, return_exceptions=True)
        return took

    try:
        took = asyncio.run(main())
    finally:
        silent.close()
    assert took < 2.0, f"model calls waited {took:.1f} s behind registry lookups"
