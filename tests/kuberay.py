"""What KubeRay does with a manifest's text, rebuilt here so that a test can run it the same way.

Only the shape of the strings KubeRay makes is vendored, from ray-project/kuberay
`ray-operator/controllers/ray/common/job.go` (`BuildJobSubmitCommand`, K8sJobMode) and
`ray-operator/controllers/ray/rayjob_controller.go` (the submitter container runs
`/bin/bash -c <the command joined with spaces>`); and, for the nodes, `ray start` with each
`rayStartParams` entry as `--key=value` and the CPU, GPU and memory a container's resources
declare when the parameters do not, what GCS fault tolerance adds to the head and the workers
(`configureGCSFaultTolerance`, `configureRedisFT`) and a RayService worker's readiness probe
(`initLivenessAndReadinessProbe`), all in `common/pod.go`. Nothing here talks to Kubernetes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from facemask.core.runtime import free_port

MANIFESTS = Path(__file__).resolve().parents[1] / "kubernetes"
# The Secret's values for a test: its placeholders replaced, as a user must.
SECRET = {
    "FACEMASK_API_KEY": "a-test-api-key-0123456789",
    "MLFLOW_TRACKING_USERNAME": "facemask",
    "MLFLOW_TRACKING_PASSWORD": "a-test-password-0123456789",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-test-signing-key-0123456789",
    "REDIS_PASSWORD": "a-test-redis-password-0123456789",
}

# KubeRay's wait for the head (utils.BasePythonHealthCommand on RayDashboardGCSHealthPath):
# a Python GET of the dashboard's /api/gcs_healthz, which token auth leaves open.
HEALTH_PROBE = "python -c \"import urllib.request; urllib.request.urlopen('{url}', timeout=5)\""


def submitter_script(rayjob: dict, address: str, job_id: str) -> str:
    """The submitter pod's bash script for `rayjob` (K8sJobMode): wait for the head, submit the
    entrypoint unless a job with this id exists, then follow its logs.

    The entrypoint is pasted as it is, unquoted, after `--`, and ended by `;`: whatever shell
    syntax it holds is run by the submitter's bash, not by the job.
    """
    spec = rayjob["spec"]
    entrypoint = spec["entrypoint"].strip()
    cmd = ["until", HEALTH_PROBE.format(url=f"{address}/api/gcs_healthz"), ">/dev/null", "2>&1", ";"]
    cmd += ["do", "echo", json.dumps(f"Waiting for Ray Dashboard GCS to become healthy at {address} ..."), ";"]
    cmd += ["sleep", "2", ";", "done", ";"]
    cmd += ["if", "!", "ray", "job", "status", "--address", address, job_id, ">/dev/null", "2>&1", ";", "then"]
    cmd += ["ray", "job", "submit", "--address", address, "--no-wait"]
    if spec.get("runtimeEnvYAML"):
        # Go's strconv.Quote of the JSON: a double-quoted string, as json.dumps writes it.
        cmd += ["--runtime-env-json", json.dumps(json.dumps(yaml.safe_load(spec["runtimeEnvYAML"])))]
    cmd += ["--submission-id", job_id]
    cmd += ["--", entrypoint, ";", "fi", ";", "ray", "job", "logs", "--address", address, "--follow", job_id]
    return " ".join(cmd)


def quantity(value: str) -> float:
    """A Kubernetes quantity ("8", "500m", "32Gi") as a number (bytes for memory)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * units.get(unit, 1)


def ray_start_params(group: dict) -> dict[str, str]:
    """A head or worker group's `ray start` parameters as KubeRay completes them: num-cpus from
    the container's CPU limit (else its request), num-gpus from its nvidia.com/gpu limit, memory
    from its memory limit, unless rayStartParams names them."""
    params = dict(group.get("rayStartParams") or {})
    resources = container(group).get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    cpu = limits.get("cpu") or requests.get("cpu")
    if "num-cpus" not in params and cpu is not None:
        params["num-cpus"] = str(int(quantity(cpu)))
    if "num-gpus" not in params and "nvidia.com/gpu" in limits:
        params["num-gpus"] = str(limits["nvidia.com/gpu"])
    if "memory" not in params and "memory" in limits:
        params["memory"] = str(int(quantity(limits["memory"])))
    return params


def start_flags(params: dict[str, str]) -> list[str]:
    """rayStartParams as `ray start` options, as KubeRay writes them (`convertParamMap`): "true"
    is a bare flag and "false" none, except for options that take true/false as a value."""
    flags = []
    for option, argument in params.items():
        if argument.lower() in ("true", "false") and option not in ("log-color", "include-dashboard"):
            flags += [f"--{option}"] if argument.lower() == "true" else []
        else:
            flags.append(f"--{option}={argument}")
    return flags


def gcs_fault_tolerance(cluster: dict, node: str, secrets: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The environment and rayStartParams that `gcsFaultToleranceOptions` adds to a `node`
    ("head" or "worker"): the head gets the Redis address, its password (`--redis-password`,
    from the Secret) and the storage namespace (the RayCluster's UID, here a fixed one); a
    worker waits up to 600 s for a restarted GCS instead of Ray's 60."""
    options = cluster.get("gcsFaultToleranceOptions")
    if not options:
        return {}, {}
    if node == "worker":
        return {"RAY_gcs_rpc_server_reconnect_timeout_s": "600"}, {}
    env = {"RAY_external_storage_namespace": "facemask-rayservice-test", "RAY_REDIS_ADDRESS": options["redisAddress"]}
    params = {}
    if "redisPassword" in options:
        password = options["redisPassword"]
        env["REDIS_PASSWORD"] = password.get("value") or secrets[password["valueFrom"]["secretKeyRef"]["key"]]
        params["redis-password"] = env["REDIS_PASSWORD"]  # "$REDIS_PASSWORD", which the container's shell expands
    return env, params


# KubeRay's probe defaults (`utils/constant.go`): the kubelet gives an exec probe 2 s.
READINESS_PROBE_TIMEOUT_S, READINESS_PROBE_INITIAL_DELAY_S = 2, 10


def worker_readiness_probe(group: dict) -> str:
    """The bash command a RayService worker is probed with. The container's own readinessProbe if it
    sets one (an exec command, or an httpGet as a wget with the probe's timeout); else KubeRay's:
    the node's raylet through the dashboard agent, then the Serve proxy's /-/healthz on the `serve`
    port (the second wget's timeout is KubeRay's initial delay, as it writes it)."""
    box = container(group)
    ports = {p.get("name"): p["containerPort"] for p in box.get("ports") or []}
    own = box.get("readinessProbe")
    if own and "exec" in own:
        return " ".join(own["exec"]["command"])
    if own and "httpGet" in own:
        get, timeout = own["httpGet"], own.get("timeoutSeconds", 1)
        port = ports.get(get["port"], get["port"])
        return f"wget --tries 1 -T {timeout} -q -O- http://localhost:{port}{get.get('path', '/')}"
    agent = int((group.get("rayStartParams") or {}).get("dashboard-agent-listen-port", 52365))
    check = "wget --tries 1 -T {timeout} -q -O- http://localhost:{port}/{path} | grep success"
    raylet = check.format(timeout=READINESS_PROBE_TIMEOUT_S, port=agent, path="api/local_raylet_healthz")
    proxy = check.format(timeout=READINESS_PROBE_INITIAL_DELAY_S, port=ports.get("serve", 8000), path="-/healthz")
    return f"{raylet} && {proxy}"


def container(group_or_pod: dict) -> dict:
    """The first container of a Deployment's, a worker group's or a head group's pod template."""
    spec = group_or_pod["template"]["spec"] if "template" in group_or_pod else group_or_pod["spec"]["template"]["spec"]
    return spec["containers"][0]


def container_env(box: dict, secrets: dict[str, str]) -> dict[str, str]:
    """The environment a container gets: its `value`s, and its `secretKeyRef`s read from
    `secrets` (a Secret's stringData); a required key that is missing fails as the pod would."""
    env = {}
    for item in box.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        if ref["key"] in secrets:
            env[item["name"]] = secrets[ref["key"]]
        elif not ref.get("optional"):
            raise KeyError(f"{item['name']}: the Secret {ref['name']} has no key {ref['key']}: the pod would not start")
    return env


def on_this_machine(text: str, paths: dict[str, str], replace: dict[str, str] | None = None) -> str:
    """A manifest's string with each mount path in `paths` (a pod's volume, the image's folder)
    put where it lies here, then each literal of `replace` (a port, a listen address) swapped."""
    for inside, here in paths.items():
        text = re.sub(rf"(?<![\w.-]){re.escape(inside)}(?=[/\s\"']|$)", here, text)
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    return text


def manifest_paths() -> list[Path]:
    """Every manifest in kubernetes/: not kustomization.yaml, which lists them."""
    return [path for path in sorted(MANIFESTS.glob("*.yaml")) if path.name != "kustomization.yaml"]


def documents() -> list[dict]:
    """Every object of every manifest in kubernetes/."""
    return [doc for path in manifest_paths() for doc in yaml.safe_load_all(path.read_text()) if doc]


def cluster_specs(doc: dict) -> list[dict]:
    """The RayCluster specs inside a RayJob, a RayService or a RayCluster."""
    spec = doc.get("spec", {})
    return [
        s
        for s in (
            spec.get("rayClusterSpec"),
            spec.get("rayClusterConfig"),
            spec if doc["kind"] == "RayCluster" else None,
        )
        if s
    ]


def manifest(name: str, kind: str) -> dict:
    """The first object of `kind` in kubernetes/`name`."""
    return next(d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d and d["kind"] == kind)


def the_secret() -> dict[str, str]:
    """kubernetes/secrets.yaml's stringData, placeholders and all."""
    return manifest("secrets.yaml", "Secret")["stringData"]


def deployment_command(
    name: str, paths: dict[str, str], secrets: dict[str, str], replace: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """kubernetes/`name`'s Deployment container as its pod runs it: its own command and args, its
    volumes at `paths` here (and `replace` swapped, see `on_this_machine`), and its environment
    from `secrets`."""
    box = container(manifest(name, "Deployment"))
    argv = [on_this_machine(part, paths, replace) for part in box["command"] + box["args"]]
    return argv, container_env(box, secrets)


def start_mlflow_deployment(volume: Path, secrets: dict[str, str]) -> tuple[subprocess.Popen, str, Path]:
    """kubernetes/mlflow.yaml's container as its pod runs it: its own command and args, its
    environment from `secrets`, the volume's /mlflow at `volume`, a free port on loopback.
    Returns (the process, its URL, its log)."""
    port = free_port()
    swap = {"--port 5000": f"--port {port}", "--host 0.0.0.0": "--host 127.0.0.1"}
    argv, box_env = deployment_command("mlflow.yaml", {"/mlflow": str(volume)}, secrets, swap)
    log = volume / "container.log"
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(volume)}
    proc = subprocess.Popen(
        argv,
        env={**env, **box_env},
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}", log


def pod_monitor_targets(monitor: dict, group: dict) -> list[tuple[int, str]]:
    """(port, path) of each endpoint a PodMonitor scrapes on the pods of `group` (a head or worker
    group): none unless its selector's labels are on the group's pod template (KubeRay copies them
    to the pods); each named port resolved on the Ray container, as the Prometheus Operator's
    relabelling does. A port name the container lacks raises: the operator would drop it silently."""
    labels = (group["template"].get("metadata") or {}).get("labels") or {}
    wanted = monitor["spec"]["selector"]["matchLabels"]
    if any(labels.get(key) != value for key, value in wanted.items()):
        return []
    ports = {p["name"]: p["containerPort"] for p in container(group).get("ports") or []}
    targets = []
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        if endpoint["port"] not in ports:
            raise KeyError(f"the PodMonitor scrapes port {endpoint['port']!r}, which the container does not name")
        targets.append((ports[endpoint["port"]], endpoint.get("path", "/metrics")))
    return targets
