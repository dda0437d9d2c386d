"""`facemask-haproxy` on the configuration Ray's own code writes, run by the real HAProxy binary
that Serve runs: the rewritten file passes HAProxy's check, and HAProxy answers in the API's
JSON where it answers by itself (no route loaded yet, no replica to take a request)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from facemask.core.runtime import free_port, haproxy_env, haproxy_script_path
from facemask.serving.haproxy_guard import BINARY_ENV, answer_in_json, real_haproxy


def serve_config(folder: Path, routes: bool) -> tuple[Path, int]:
    """The HAProxy configuration Ray's HAProxyApi writes, with the app's route to a replica that
    is not running (`routes`) or with none loaded yet; and the port it listens on."""
    from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig
    from ray.serve.config import HTTPOptions

    port = free_port()
    cfg = HAProxyConfig(
        http_options=HTTPOptions(host="127.0.0.1", port=port),
        socket_path=str(folder / "admin.sock"),
        server_state_base=str(folder),
        server_state_file=str(folder / "state"),
        stats_port=free_port(),
        metrics_port=free_port(),
    )
    api = HAProxyApi(cfg=cfg, config_file_path=str(folder / "haproxy.cfg"))
    if routes:
        dead = ServerConfig(name="replica", host="127.0.0.1", port=free_port())
        api.set_backend_configs(
            {"facemask": BackendConfig(app_name="facemask", name="http-facemask", path_prefix="/", servers=[dead])}
        )
    api._generate_config_file_internal()
    return folder / "haproxy.cfg", port


@pytest.mark.parametrize("routes", [False, True], ids=["no route loaded yet", "a route to a dead replica"])
def test_haproxy_answers_in_json_with_retry_after_where_serve_had_plain_text(tmp_path, routes):
    config, port = serve_config(tmp_path, routes)
    before = config.read_text()
    answer_in_json(config)
    rewritten = config.read_text()
    assert rewritten != before and "Internal Server Error" not in rewritten
    check = subprocess.run([real_haproxy(), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr

    haproxy = subprocess.Popen(
        [real_haproxy(), "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/predict", content=b"x", timeout=10)
                break
            except httpx.TransportError:
                assert haproxy.poll() is None and time.monotonic() < deadline, haproxy.stderr.read()
                time.sleep(0.1)
    finally:
        haproxy.kill()
        haproxy.wait()
    # Serve's configuration answered these 404 "Path '/predict' not found" and a bare 500.
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
    assert answer.headers["content-type"] == "application/json"
    assert json.loads(answer.text)["error"] == "unavailable"


def test_a_configuration_of_another_shape_is_left_to_haproxy_and_said(tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text("global\n    maxconn 10\ndefaults\n    mode http\n")
    done = subprocess.run(
        [sys.executable, "-m", "facemask.serving.haproxy_guard", "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert config.read_text() == "global\n    maxconn 10\ndefaults\n    mode http\n"
    assert "HAProxy runs with Serve's own error answers" in done.stderr
    assert "Configuration file has no error" in done.stdout, done.stdout + done.stderr  # HAProxy itself ran


def test_serve_starts_facemask_haproxy_where_it_is_installed():
    script = haproxy_script_path()
    assert script and os.access(script, os.X_OK)
    assert haproxy_env()[BINARY_ENV] == script
