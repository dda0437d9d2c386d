"""kubernetes/rayservice.yaml run here as KubeRay runs it, each pod a network namespace of its own
(tests/pods.py), so that every string of the manifests runs unchanged: `redis:6379`,
`http://mlflow:5000`, the proxies on port 8000 of each node, the GCS on 6379.

The pods: redis.yaml's container (its command, its password from the Secret), mlflow.yaml's
container (its command and args, auth on), the RayService's head and GPU worker (`ray start` with
their rayStartParams, the resources and environment KubeRay derives from their containers, token
auth, and what gcsFaultToleranceOptions adds: tests/kuberay.py). The serveConfigV2 is deployed as
written through the head's dashboard, as KubeRay does.

Mapped to this machine: the pods' volumes to folders here, a small object store per node, the
worker's GPU computing on the CPU (FACEMASK_GPU_AS_CPU, the test-only switch: the replica still asks
Ray for 0.25 GPU). Not run: Kubernetes itself (the operator's reconciliation, its Services'
endpoints, the kubelet's probe schedule, restarts), the autoscaler sidecar.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.kuberay import (
    SECRET,
    container,
    container_env,
    deployment_command,
    gcs_fault_tolerance,
    manifest,
    on_this_machine,
    pod_monitor_targets,
    ray_start_params,
    start_flags,
    the_secret,
    worker_readiness_probe,
)
from tests.pods import PodNetwork
from tests.services import wait_http, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.whole_machine(
        reason="the worker's proxy must ride through saturation and a head restart within the outage it measures"
    ),
]
ROOT = Path(__file__).resolve().parents[3]
RAY = str(Path(sys.executable).with_name("ray"))
REPLICA = "ServeReplica:facemask:Facemask"
REGISTER = """
import sys
from pathlib import Path
from facemask.tracking import RunLogger, log_and_register, set_alias
store = "http://mlflow:5000"
run = RunLogger("rayservice", "champion", {}, tracking_uri=store, system_metrics=False)
version = log_and_register(run.run_id, Path(sys.argv[1]), {}, store, name="facemask-detector")
run.end("FINISHED")
set_alias("facemask-detector", "champion", version, store)
"""


def needs() -> str | None:
    """Why this tier cannot run here, or None."""
    for tool in ("redis-server", "wget"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian's redis-server and wget)"
    return PodNetwork.unavailable()


class Pods:
    """The pods of this test, their processes, and what they log."""

    def __init__(self, root: Path) -> None:
        self.root, self.net, self.procs = root, PodNetwork(), {}
        for pod in ("redis", "mlflow", "head", "worker"):
            self.net.add(pod)
        self.net.name_services({"redis": "redis", "mlflow": "mlflow", "facemask-head-svc": "head"})

    def address(self, pod: str) -> str:
        return self.net.pods[pod]

    def start(self, pod: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.procs[pod] = self.net.start(pod, argv, env, self.root / f"{pod}.log", cwd=self.root)
        return self.procs[pod]

    def kill(self, pod: str) -> None:
        """The pod dies: every process in its namespace, at once."""
        ns = self.net.namespace(pod)
        listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in listed:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(
            lambda: not subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.strip(),
            30,
            f"every process of pod {pod} gone",
        )

    def log(self, pod: str, tail: int = 4000) -> str:
        path = self.root / f"{pod}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def close(self) -> None:
        for pod in self.net.pods:
            self.kill(pod)
        self.net.close()


def ray_node(group: dict, extra: dict[str, str], temp: Path, head: bool) -> list[str]:
    """`ray start` as KubeRay generates it for a group: its rayStartParams (completed from the
    container) as --key=value; a worker joins the head's Service. A small object store per node."""
    argv = [RAY, "start", "--block", "--disable-usage-stats", f"--temp-dir={temp}", "--object-store-memory=300000000"]
    argv += ["--head"] if head else ["--address=facemask-head-svc:6379"]
    return argv + start_flags({**ray_start_params(group), **extra})


# The image's Python (kubernetes/Dockerfile) is this interpreter's folder here.
IMAGE_BIN = {"/home/ray/anaconda3/bin": str(Path(sys.executable).parent)}


def ray_env(base: dict[str, str], group: dict, extra: dict[str, str]) -> dict[str, str]:
    env = container_env(container(group), {**the_secret(), **SECRET})
    return {**base, **{name: on_this_machine(value, IMAGE_BIN) for name, value in env.items()}, **extra}


def test_the_rayservice_serves_through_saturation_and_a_head_restart(
    registered_detector, known_image, tmp_path, machine_alone
):
    reason = needs()
    if reason:
        pytest.skip(f"the RayService tier needs pods here: {reason}")
    service = manifest("rayservice.yaml", "RayService")["spec"]
    cluster = service["rayClusterConfig"]
    head_group, worker_group = cluster["headGroupSpec"], cluster["workerGroupSpecs"][0]
    secrets = {**the_secret(), **SECRET}
    home = tmp_path / "home"
    home.mkdir()
    base = {
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "YOLO_CONFIG_DIR": os.environ["YOLO_CONFIG_DIR"],
        "YOLO_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    subprocess.run([RAY, "get-auth-token", "--generate"], env=base, check=True, capture_output=True, timeout=60)
    # KubeRay puts the cluster's token in every Ray container (authOptions: token).
    token = (home / ".ray" / "auth_token").read_text().strip()
    base |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    # Ray's session folders hold its sockets, whose paths must stay short: under /tmp, not tmp_path.
    ray_temp = {pod: Path("/tmp") / f"fm-rs-{pod}-{os.getpid()}" for pod in ("head", "worker")}
    pods = Pods(tmp_path)
    try:
        # Redis and MLflow as their Deployments' containers run, each volume a folder here.
        for pod, name, mount in (("redis", "redis.yaml", "/data"), ("mlflow", "mlflow.yaml", "/mlflow")):
            volume = tmp_path / f"{pod}-volume"
            volume.mkdir()
            argv, env = deployment_command(name, {mount: str(volume)}, secrets)
            pods.start(pod, argv, {**base, **env})
        wait_http(f"http://{pods.address('mlflow')}:5000/health", 180, proc=pods.procs["mlflow"])

        store_env = {**base, **{k: secrets[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}}
        registered = subprocess.run(
            pods.net.command("worker", [sys.executable, "-c", REGISTER, str(registered_detector["weights"])]),
            env={**store_env, "MLFLOW_TRACKING_URI": "http://mlflow:5000"},
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert registered.returncode == 0, registered.stderr[-3000:]

        head_env, head_params = gcs_fault_tolerance(cluster, "head", secrets)
        worker_env, _ = gcs_fault_tolerance(cluster, "worker", secrets)
        # enableInTreeAutoscaling: KubeRay runs the autoscaler as a sidecar and starts the head without Ray's monitor.
        head_params |= {"no-monitor": "true"} if cluster.get("enableInTreeAutoscaling") else {}
        head_argv = ray_node(head_group, head_params, ray_temp["head"], head=True)
        head_environment = ray_env(base, head_group, head_env)
        head = pods.start("head", head_argv, head_environment)
        dashboard = f"http://{pods.address('head')}:8265"
        wait_http(f"{dashboard}/api/gcs_healthz", 180, proc=head)
        worker_extra = {**worker_env, "FACEMASK_GPU_AS_CPU": "1"}
        worker_argv = ray_node(worker_group, {}, ray_temp["worker"], head=False)
        pods.start("worker", worker_argv, ray_env(base, worker_group, worker_extra))

        config = tmp_path / "serve-config.yaml"
        config.write_text(service["serveConfigV2"])
        deploy = subprocess.run(
            [str(Path(RAY).with_name("serve")), "deploy", str(config), "--address", dashboard],
            env=base,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr

        key = {"Authorization": f"Bearer {secrets['FACEMASK_API_KEY']}"}
        image = known_image.read_bytes()
        worker_url, head_url = f"http://{pods.address('worker')}:8000", f"http://{pods.address('head')}:8000"

        # One HTTP client per thread: `httpx.post` builds a client, and with it an SSL context, for
        # every request (about 20 ms of CPU); the saturating clients below, answered 503 at once,
        # spent the test's CPU on that rather than on the endpoint under test.
        per_thread = threading.local()

        def predict(url: str, headers: dict | None = key, timeout: float = 30, imgsz: int = 320) -> int:
            if not hasattr(per_thread, "http"):
                per_thread.http = httpx.Client()
            try:
                answer = per_thread.http.post(
                    f"{url}/predict", params={"imgsz": imgsz}, content=image, headers=headers, timeout=timeout
                )
                return answer.status_code
            except httpx.HTTPError:
                return 0

        wait_until(
            lambda: predict(worker_url) == 200,
            420,
            "the application answering through the worker's proxy",
            interval=2,
        )
        # Both nodes' ingresses serve the app; the replica refuses a request without the key.
        assert predict(head_url) == 200 and predict(worker_url, headers=None) == 401
        # The replica asks for what serveConfigV2 says and is placed on the GPU worker.
        options = yaml.safe_load(service["serveConfigV2"])["applications"][0]["deployments"][0]["ray_actor_options"]
        nodes = {n["node_id"]: n["node_ip"] for n in state("nodes", dashboard, base)}
        replicas = [a for a in state("actors", dashboard, base) if a.get("class_name") == REPLICA]
        assert replicas and all(nodes.get(a["node_id"]) == pods.address("worker") for a in replicas), replicas
        wanted = {"CPU": options["num_cpus"], "GPU": options["num_gpus"]}
        assert all(a["required_resources"] == wanted for a in replicas), [a["required_resources"] for a in replicas]
        scraped = scrape_as_the_pod_monitor(pods, {"head": head_group, "worker": worker_group})
        print(f"monitoring.yaml's PodMonitor: {scraped}")

        # The outage and the saturation, alone; the pods' start and stop run beside other tests.
        with machine_alone():
            # The head pod dies and comes back: the worker keeps answering, and its replica is not
            # restarted. (Before the saturation below, whose load lets the autoscaler add a replica.)
            before = replica_pids(dashboard, base)
            assert before, "no replica alive"
            outage: list[tuple[float, int]] = []
            stop_probing = threading.Event()

            def keep_asking() -> None:
                while not stop_probing.is_set():
                    outage.append((time.monotonic(), predict(worker_url, timeout=10)))
                    time.sleep(0.25)

            asker = threading.Thread(target=keep_asking)
            killed = time.monotonic()
            pods.kill("head")
            asker.start()
            try:
                time.sleep(5)  # the head stays down for a while, as a pod being rescheduled does
                assert predict(head_url, timeout=2) == 0
                pods.start("head", head_argv, head_environment)
                wait_until(
                    lambda: predict(head_url, timeout=10) == 200, 300, "the restarted head's proxy serving", interval=1
                )
            finally:
                stop_probing.set()
                asker.join(timeout=30)
            back = time.monotonic() - killed
            failed = [(round(at - killed, 2), status) for at, status in outage if status != 200]
            assert outage and not failed, f"the worker's proxy failed during the head's restart: {failed[:20]}"
            after = replica_pids(dashboard, base)
            assert after == before, f"a replica was restarted (its model loaded again): {before} -> {after}"
            print(f"head restart: {len(outage)} requests to the worker during {back:.1f} s, all 200; replica {after}")

            # KubeRay's readiness probe of the worker, while its replica holds all it admits (the
            # app's max_pending) and refuses the rest with 503s.
            probe = worker_readiness_probe(worker_group)
            admits = yaml.safe_load(service["serveConfigV2"])["applications"][0]["args"]["max_pending"]
            in_flight, answers, lock, saturating = [0], [], threading.Lock(), threading.Event()

            def client() -> None:
                while not saturating.is_set():
                    with lock:
                        in_flight[0] += 1
                    status = predict(worker_url, timeout=300, imgsz=640)  # slow enough to pile up
                    with lock:
                        in_flight[0] -= 1
                        answers.append(status)

            clients = [threading.Thread(target=client) for _ in range(admits + 8)]  # 8 more than it admits
            for thread in clients:
                thread.start()
            probes = []
            try:
                wait_until(lambda: 503 in answers, 120, "the replica refusing what it cannot hold", interval=0.05)
                for _ in range(3):
                    held = in_flight[0]
                    started = time.perf_counter()
                    ran = subprocess.run(
                        pods.net.command("worker", ["bash", "-c", probe]), capture_output=True, text=True
                    )
                    probes.append((ran.returncode, round(time.perf_counter() - started, 3), held))
            finally:
                saturating.set()
                for thread in clients:
                    thread.join(timeout=300)
            assert all(code == 0 for code, _, _ in probes), probes
            assert all(held >= admits for _, _, held in probes), f"the replica was not saturated while probed: {probes}"
            counts = {status: answers.count(status) for status in set(answers)}
            # An answer, a refusal (503), or at worst Serve's request_timeout_s (408): never a dropped
            # connection or another error.
            assert 200 in counts and set(counts) <= {200, 503, 408}, f"under saturation: {counts}"
            print(f"readiness probe under saturation (seconds, requests in flight): {probes}; answers {counts}")
    except BaseException:
        for pod in ("head", "worker", "mlflow", "redis"):
            print(f"--- {pod} ---\n{pods.log(pod)}")
        raise
    finally:
        pods.close()
        for folder in ray_temp.values():
            shutil.rmtree(folder, ignore_errors=True)


def scrape_as_the_pod_monitor(pods: Pods, groups: dict[str, dict]) -> dict[str, list[str]]:
    """Every endpoint monitoring.yaml's PodMonitor scrapes, on each pod, read as Prometheus would;
    the worker, which holds the replica, exports the app's request counter (after Ray's metrics
    agent's next report) and each pod's HAProxy its own metrics. Returns what was read where."""
    monitor = manifest("monitoring.yaml", "PodMonitor")
    read = {}
    for pod, group in groups.items():
        targets = pod_monitor_targets(monitor, group)
        assert targets, f"the PodMonitor selects no {pod} pod"
        for port, path in targets:
            url = f"http://{pods.address(pod)}:{port}{path}"
            expected = "haproxy_" if port == 9101 else ("ray_facemask_requests_total" if pod == "worker" else "ray_")
            wait_until(
                lambda url=url, expected=expected: expected in httpx.get(url, timeout=10).text,
                90,
                f"{expected} at {url}",
                interval=2,
            )
            read.setdefault(pod, []).append(f":{port}{path} has {expected}")
    return read


def state(kind: str, dashboard: str, env: dict[str, str]) -> list[dict]:
    """Ray's state API: `ray list KIND --detail` of the cluster, alive ones only."""
    listed = subprocess.run(
        [RAY, "list", kind, "--address", dashboard, "--filter", "state=ALIVE", "--detail", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    return json.loads(listed.stdout or "[]")


def replica_pids(dashboard: str, env: dict[str, str]) -> dict[str, int]:
    """The alive Serve replicas of the app, by actor id, with their PIDs."""
    return {a["actor_id"]: a["pid"] for a in state("actors", dashboard, env) if a.get("class_name") == REPLICA}
