"""kubernetes/mlflow.yaml's server, run here as its pod runs it: the container's own `command` and
`args`, read from the file, with its environment from the Secret, against sqlite and against a
real PostgreSQL. Pods call it as http://mlflow:5000 (the Service's name), so requests carry
that Host header; a client logs in with the Secret's variables, exactly as a trial does.

Mapped to this machine, and nothing else: the volume's /mlflow to a folder, the port to a free
one, 0.0.0.0 to loopback. What needs Kubernetes itself (the Service's DNS name, the
NetworkPolicy) is not run here."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from facemask.core.lifecycle import stop_process_group
from tests.kuberay import SECRET, start_mlflow_deployment, the_secret
from tests.services import PostgresServer, postgres_bin, wait_http, wait_until

pytestmark = pytest.mark.integration
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def check_the_cluster_can_use_it(url: str, tmp_path: Path, monkeypatch) -> str:
    """What a pod sees: the Service's names get in with the Secret's user, nobody without it;
    a run logged and read back the way a trial does. Returns the run's id."""
    auth = (SECRET["MLFLOW_TRACKING_USERNAME"], SECRET["MLFLOW_TRACKING_PASSWORD"])
    assert httpx.get(f"{url}/health", headers={"Host": "mlflow:5000"}).status_code == 200  # the probe, no login
    for host in ("mlflow:5000", "mlflow.facemask.svc.cluster.local:5000", "mlflow.default.svc:5000"):
        assert httpx.get(url + SEARCH, headers={"Host": host}, auth=auth).status_code == 200, host
        assert httpx.get(url + SEARCH, headers={"Host": host}).status_code == 401, host
    assert httpx.get(url + SEARCH, headers={"Host": "mlflow:5000"}, auth=(auth[0], "wrong")).status_code == 401
    assert httpx.get(url + SEARCH, headers={"Host": "attacker.example:5000"}, auth=auth).status_code == 403

    # A client built as a trial builds it: MLflow's own client, the user from the environment.
    from facemask.tracking import RunLogger, client

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth[1])
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"weights")
    run = RunLogger("deployment", "a-trial", {"facemask.test": "1"}, tracking_uri=url, system_metrics=False)
    run.log_params({"epochs": 1})
    run.log_metrics({"val/mAP50": 0.5}, step=1)
    run.log_artifact(weights, "weights")
    run.end("FINISHED")
    assert run.run_id and run.failures == 0, "logging through the Service's name with the Secret's user failed"
    got = client(url).get_run(run.run_id)
    assert got.data.metrics["val/mAP50"] == 0.5 and got.info.status == "FINISHED"
    assert [a.path for a in client(url).list_artifacts(run.run_id, "weights")] == ["weights/best.pt"]
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(Exception, match="401|Unauthorized|credentials"):
        client(url).get_run(run.run_id)
    check_a_changed_password_is_refused_at_once(url, auth)
    return run.run_id


def check_a_changed_password_is_refused_at_once(url: str, auth: tuple[str, str]) -> None:
    """The server trusts a checked login for auth_cache_ttl_seconds; a password changed through
    MLflow's API must still end the old one's access on the next request, not a minute later."""
    host = {"Host": "mlflow:5000"}
    assert httpx.get(url + SEARCH, headers=host, auth=auth).status_code == 200  # the old login, now cached
    rotated = auth[1] + "-rotated"
    change = {"username": auth[0], "password": rotated, "current_password": auth[1]}
    response = httpx.patch(f"{url}/api/2.0/mlflow/users/update-password", json=change, headers=host, auth=auth)
    assert response.status_code == 200, response.text
    assert httpx.get(url + SEARCH, headers=host, auth=auth).status_code == 401
    assert httpx.get(url + SEARCH, headers=host, auth=(auth[0], rotated)).status_code == 200


def run_and_check(volume: Path, secrets: dict[str, str], tmp_path: Path, monkeypatch) -> str:
    proc, url, log = start_mlflow_deployment(volume, secrets)
    try:
        wait_http(f"{url}/health", timeout=120, proc=proc)
        return check_the_cluster_can_use_it(url, tmp_path, monkeypatch)
    finally:
        stop_process_group(proc, grace_s=20)
        print(log.read_text()[-2000:])


def test_mlflow_deployment_with_sqlite_lets_the_clusters_pods_in_and_nobody_else(tmp_path, monkeypatch):
    volume = tmp_path / "volume"
    volume.mkdir()
    run_and_check(volume, {**the_secret(), **SECRET}, tmp_path, monkeypatch)
    assert (volume / "mlflow.db").is_file() and (volume / "basic_auth.db").is_file()
    # Checked logins are cached (not hashed on every request), as the check above relies on.
    assert "auth_cache_ttl_seconds = 60" in (volume / "basic_auth.ini").read_text().splitlines()
    assert list((volume / "artifacts").rglob("best.pt")), "the artifacts are not on the server's volume"


@pytest.mark.skipif(postgres_bin() is None, reason="Debian's postgresql is not installed (.ci/run installs it)")
def test_mlflow_deployment_with_postgresql_keeps_runs_and_users_in_the_database(tmp_path, monkeypatch):
    volume = tmp_path / "volume"
    volume.mkdir()
    postgres = PostgresServer().start()
    try:
        store = postgres.create_database("mlflow")
        users = postgres.create_database("mlflow_auth")
        secrets = {**the_secret(), **SECRET, "MLFLOW_BACKEND_STORE_URI": store, "MLFLOW_AUTH_DATABASE_URI": users}
        run_id = run_and_check(volume, secrets, tmp_path, monkeypatch)
        assert postgres.psql("mlflow", f"SELECT status FROM runs WHERE run_uuid = '{run_id}'").strip() == "FINISHED"
        assert postgres.psql("mlflow_auth", "SELECT username FROM users").split() == ["facemask"]
        assert not (volume / "mlflow.db").exists() and not (volume / "basic_auth.db").exists()
    finally:
        postgres.stop()


@pytest.mark.parametrize("key", ["MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"])
def test_mlflow_deployment_refuses_to_start_with_the_secrets_placeholder(tmp_path, key):
    volume = tmp_path / "volume"
    volume.mkdir()
    secrets = {**the_secret(), **SECRET, key: the_secret()[key]}
    assert secrets[key].startswith("CHANGE-ME")
    proc, _, log = start_mlflow_deployment(volume, secrets)
    try:
        wait_until(lambda: proc.poll() is not None, 60, "exit of the server started with a placeholder")
        assert proc.returncode == 1
    finally:
        stop_process_group(proc, grace_s=5)
    assert f"{key} is unset or still a placeholder" in log.read_text()
