"""kubernetes/redis.yaml's container as its pod runs it (its command, its password from the
Secret): a placeholder or an empty password stops it before Redis starts (an empty one would
turn Redis's auth off); a real one starts Redis with auth required."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.kuberay import SECRET, deployment_command, the_secret
from tests.services import free_port, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("redis-server"), reason="Debian's redis-server is not installed"),
]


def redis_container(tmp_path, password: str, port: int) -> tuple[list[str], dict[str, str]]:
    secrets = {**the_secret(), **SECRET, "REDIS_PASSWORD": password}
    argv, env = deployment_command("redis.yaml", {"/data": str(tmp_path)}, secrets, {"--port 6379": f"--port {port}"})
    return argv, {"PATH": os.environ["PATH"], **env}


@pytest.mark.parametrize("password", ["", the_secret()["REDIS_PASSWORD"]], ids=["empty", "placeholder"])
def test_redis_refuses_an_empty_or_placeholder_password(tmp_path, password):
    assert password == "" or password.startswith("CHANGE-ME")
    argv, env = redis_container(tmp_path, password, free_port())
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "REDIS_PASSWORD is unset or still a placeholder" in done.stderr, done


def test_redis_starts_with_the_secrets_password_and_requires_it(tmp_path):
    port = free_port()
    argv, env = redis_container(tmp_path, SECRET["REDIS_PASSWORD"], port)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        cli = ["redis-cli", "-h", "127.0.0.1", "-p", str(port)]

        def ping(*auth: str) -> str:
            return subprocess.run([*cli, *auth, "ping"], capture_output=True, text=True, timeout=10).stdout.strip()

        wait_until(lambda: ping("--no-auth-warning", "-a", SECRET["REDIS_PASSWORD"]) == "PONG", 30, "Redis up", proc)
        assert ping().startswith("NOAUTH")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
