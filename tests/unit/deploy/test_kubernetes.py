"""The Kubernetes manifests, validated offline: KubeRay's own CRD schemas (made strict) for the
RayJob and RayService, Kubernetes' schemas (`kubernetes-validate`, strict) for the core
objects, and what neither schema can say: string rayStartParams, the Ray version in one
number, token auth's minimum Ray version, one image tag, and the Serve application being
the same as serve/config.yaml. Each check is shown to fail on a broken copy."""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from tests.kuberay import cluster_specs, documents

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = ROOT / "kubernetes"
CRDS = ROOT.parent / "shared" / "kuberay"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
CORE_KINDS = {"Deployment", "Service", "PersistentVolumeClaim", "Secret", "ConfigMap", "NetworkPolicy"}
TOKEN_AUTH_MIN_RAY = (2, 52, 0)


def strict(schema):
    """The schema with `additionalProperties: false` on every object that lists its properties,
    so a misspelled field fails (KubeRay's CRDs leave it open); OpenAPI's `nullable` made JSON Schema."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        if schema.pop("nullable", False) and "type" in schema:
            schema["type"] = [schema["type"], "null"] if isinstance(schema["type"], str) else schema["type"] + ["null"]
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@lru_cache(maxsize=None)
def crd_validator(kind: str):
    import jsonschema

    if not (CRDS / CRD_FILES[kind]).is_file():
        pytest.skip(f"KubeRay's CRDs not found at {CRDS} (../shared is absent outside CI)")
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text())
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = strict(v1["schema"]["openAPIV3Schema"])
    # metadata is Kubernetes' ObjectMeta, which the CRD leaves untyped.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict) -> list[str]:
    if doc.get("kind") not in CRD_FILES:
        return [f"kind {doc.get('kind')!r} is not one of KubeRay's {sorted(CRD_FILES)}"]
    if doc.get("apiVersion") != "ray.io/v1":
        return [f"apiVersion {doc.get('apiVersion')!r}: expected ray.io/v1"]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator(doc["kind"]).iter_errors(doc)]


def core_errors(doc: dict) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc)]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"no schema: {exc}"]
    return []


def pod_specs(doc: dict) -> list[dict]:
    out = []
    for cluster in cluster_specs(doc):
        out.append(cluster["headGroupSpec"]["template"]["spec"])
        out += [group["template"]["spec"] for group in cluster.get("workerGroupSpecs", [])]
    if doc["kind"] == "Deployment":
        out.append(doc["spec"]["template"]["spec"])
    return out


def start_params(doc: dict) -> list[dict]:
    return [
        group["rayStartParams"]
        for cluster in cluster_specs(doc)
        for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    ]


def operator_errors(doc: dict, ray_version: str, image: str) -> list[str]:
    """What the operator enforces beyond the schema, and this project's own rules."""
    errors = []
    for params in start_params(doc):
        errors += [f"rayStartParams.{k}: {v!r} must be a string" for k, v in params.items() if not isinstance(v, str)]
    for cluster in cluster_specs(doc):
        version = cluster.get("rayVersion", "")
        if version != ray_version:
            errors.append(f"rayVersion {version!r}: pyproject.toml pins ray=={ray_version}")
        parsed = tuple(int(x) for x in re.findall(r"\d+", version)[:3])
        if (cluster.get("authOptions") or {}).get("mode") == "token" and parsed < TOKEN_AUTH_MIN_RAY:
            errors.append(f"authOptions.mode token needs rayVersion >= 2.52.0, not {version!r}")
    # Redis (the GCS's store) runs its own image; every pod of the project's code runs the project's.
    pods = [] if doc["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "redis" else pod_specs(doc)
    for pod in pods:
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            if not is_the_image(container.get("image", ""), image):
                errors.append(f"container {container.get('name')}: image {container.get('image')!r}, expected {image}")
    return errors


def is_the_image(ref: str, image: str) -> bool:
    """The project's image: its tag, or a digest, in any registry (docs/jobs-and-clusters.md pins one)."""
    name = image.split(":", 1)[0]
    return bool(re.fullmatch(rf"([^\s@]+/)?({re.escape(image)}|{re.escape(name)}@sha256:[0-9a-f]{{64}})", ref))


def project_images(docs: list[dict]) -> set[str]:
    return {
        c["image"]
        for d in docs
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/name") != "redis"
        for pod in pod_specs(d)
        for c in pod["containers"]
    }


def pinned_ray() -> str:
    return re.search(r'"ray\[[^\]]*\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)


def project_image() -> str:
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    return f"facemask:{version}"


def test_the_folder_holds_each_piece():
    kinds = sorted(d["kind"] for d in documents())
    assert {"RayJob", "RayService", "Deployment", "Service", "PersistentVolumeClaim", "Secret"} <= set(kinds)
    assert (MANIFESTS / "Dockerfile").is_file()


@pytest.mark.parametrize("doc", [d for d in documents() if d["kind"] in CRD_FILES], ids=lambda d: d["kind"])
def test_kuberay_resources_match_kuberays_strict_schema(doc):
    assert crd_errors(doc) == []


@pytest.mark.parametrize(
    "doc", [d for d in documents() if d["kind"] in CORE_KINDS], ids=lambda d: f"{d['kind']}-{d['metadata']['name']}"
)
def test_core_objects_match_kubernetes_strict_schema(doc):
    assert core_errors(doc) == []


@pytest.mark.parametrize(
    "doc", [d for d in documents() if d["kind"] in CRD_FILES or d["kind"] == "Deployment"], ids=lambda d: d["kind"]
)
def test_what_the_operator_enforces_and_one_image(doc):
    assert operator_errors(doc, pinned_ray(), project_image()) == []


def test_one_image_everywhere_in_any_registry_or_by_digest():
    docs = documents()
    assert project_images(docs) == {project_image()}
    moved = copy.deepcopy(docs)
    for doc in moved:
        for pod in pod_specs(doc):
            for c in pod["containers"]:
                c["image"] = c["image"].replace(project_image(), "registry.example.com/team/" + project_image())
    assert all(operator_errors(d, pinned_ray(), project_image()) == [] for d in moved)
    pinned = "registry.example.com/team/facemask@sha256:" + "ab" * 32
    assert is_the_image(pinned, project_image()) and not is_the_image(pinned[:-2], project_image())
    assert not is_the_image("facemask:0.0.9", "facemask:0.1.0")
    assert not is_the_image("evil/facemask2:0.1.0", "facemask:0.1.0")
    # One pod left on the old reference: two images, which the first assertion refuses.
    first = next(d for d in moved if pod_specs(d))
    pod_specs(first)[0]["containers"][0]["image"] = project_image()
    assert len(project_images(moved)) == 2


def test_one_ray_version_everywhere():
    version = pinned_ray()
    dockerfile = (MANIFESTS / "Dockerfile").read_text()
    assert re.search(r"^ARG RAY_VERSION=([\d.]+)$", dockerfile, re.M).group(1) == version
    assert f"rayproject/ray:{version}-py311-gpu" in (ROOT / "cluster.yaml").read_text()
    versions = {c["rayVersion"] for d in documents() for c in cluster_specs(d)}
    assert versions == {version}


def test_the_rayservice_serves_the_same_application_as_serve_config():
    service = next(d for d in documents() if d["kind"] == "RayService")
    deployed = yaml.safe_load(service["spec"]["serveConfigV2"])
    local = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    assert deployed["applications"] == local["applications"]
    assert deployed["http_options"]["host"] == "0.0.0.0" and deployed["http_options"]["port"] == 8000
    assert deployed["applications"][0]["args"]["model_uri"] == "models:/facemask-detector@champion"
    from facemask.core.runtime import HAPROXY_ENV, PROXY_ENV, SERVE_ENV

    for pod in pod_specs(service):
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        for name, value in {**SERVE_ENV, **PROXY_ENV, **HAPROXY_ENV}.items():  # as cluster.yaml, `facemask serve`
            assert env[name]["value"] == value, name
        assert env["FACEMASK_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "facemask-secrets"
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
        # The script kubernetes/Dockerfile checks is where the image installed it.
        assert env["RAY_SERVE_HAPROXY_BINARY_PATH"]["value"] == "/home/ray/anaconda3/bin/facemask-haproxy"
    assert (
        'test "$(command -v facemask-haproxy)" = /home/ray/anaconda3/bin/facemask-haproxy'
        in (ROOT / "kubernetes" / "Dockerfile").read_text()
    )


def serve_capacity_errors(service: dict) -> list[str]:
    """Serve's replicas at their maximum must fit the worker groups at theirs, with an autoscaler to add them."""
    errors = []
    cluster = service["spec"]["rayClusterConfig"]
    app = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    deployment = app["deployments"][0]
    most = deployment["autoscaling_config"]["max_replicas"]
    cpus, gpus = deployment["ray_actor_options"]["num_cpus"], deployment["ray_actor_options"].get("num_gpus", 0)
    held = 0
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        per_node = int(float(group["rayStartParams"]["num-cpus"]) // cpus)
        if gpus:
            per_node = min(per_node, int(float(limits.get("nvidia.com/gpu", 0)) / gpus))
        held += per_node * group["maxReplicas"]
    if most > held:
        errors.append(f"max_replicas {most} but the worker groups hold {held} at their maxReplicas")
    if most > sum(g["replicas"] for g in cluster["workerGroupSpecs"]) and not cluster.get("enableInTreeAutoscaling"):
        errors.append("Serve may ask for more replicas than the running workers hold, and no autoscaler adds workers")
    return errors


def test_the_rayservice_survives_its_head_upgrades_without_a_second_target_and_can_hold_its_replicas():
    service = next(d for d in documents() if d["kind"] == "RayService")
    spec = service["spec"]
    assert spec["upgradeStrategy"]["type"] in ("NewCluster", "NewClusterWithIncrementalUpgrade")
    ft = spec["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert (
        ft["redisAddress"] == "redis:6379"
        and ft["redisPassword"]["valueFrom"]["secretKeyRef"]["key"] == "REDIS_PASSWORD"
    )
    assert any(d["kind"] == "Deployment" and d["metadata"]["name"] == "redis" for d in documents())
    # The endpoint's Service is KubeRay's (it follows the active cluster); none of ours selects serving pods.
    assert spec["serveService"]["metadata"]["name"] == "facemask-endpoint"
    assert not [d for d in documents() if d["kind"] == "Service" and "ray.io/serve" in d["spec"].get("selector", {})]
    for group in spec["rayClusterConfig"]["workerGroupSpecs"]:
        assert "readinessProbe" not in group["template"]["spec"]["containers"][0], "KubeRay's own probe is cheap"
    assert serve_capacity_errors(service) == []


def test_serve_beyond_what_the_workers_hold_is_refused():
    service = copy.deepcopy(next(d for d in documents() if d["kind"] == "RayService"))
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    config["applications"][0]["deployments"][0]["autoscaling_config"]["max_replicas"] = 64
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    assert "max_replicas 64 but the worker groups hold 16" in serve_capacity_errors(service)[0]
    del service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"]
    assert any("no autoscaler" in e for e in serve_capacity_errors(service))


@pytest.mark.parametrize("job", [d for d in documents() if d["kind"] == "RayJob"], ids=lambda d: d["metadata"]["name"])
def test_each_rayjob_cleans_up_and_keeps_its_results_off_the_pod(job):
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0 and "backoffLimit" in spec
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert "--storage /results/" in spec["entrypoint"]
    # KubeRay pastes the entrypoint into its submitter's bash: shell syntax would run there, not in the job.
    assert not re.search(r"&&|\|\||;|\$\(|`|\|", spec["entrypoint"]), spec["entrypoint"]
    workers = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert all(w["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1 for w in workers)
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for pod in pod_specs(job)
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert "facemask-results" in claims


def every_pod() -> list[tuple[str, dict]]:
    """Each pod template of the manifests, Ray's inside the RayJobs and the RayService included."""
    return [
        (f"{d['kind']}/{d['metadata']['name']}/{i}", pod) for d in documents() for i, pod in enumerate(pod_specs(d))
    ]


@pytest.mark.parametrize(("where", "pod"), every_pod(), ids=[where for where, _ in every_pod()])
def test_every_pod_meets_the_restricted_profile_and_holds_no_api_token_it_does_not_use(where, pod):
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "fsGroup" in context  # a volume owned by root stays writable for the pod's user
    for box in pod["containers"] + pod.get("initContainers", []):
        restricted = {k: v for k, v in box["securityContext"].items() if k != "readOnlyRootFilesystem"}
        assert restricted == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    # KubeRay adds its autoscaler, which calls the API, to the RayService's head (its first pod).
    autoscaler_here = where.startswith("RayService/") and where.endswith("/0")
    assert pod.get("automountServiceAccountToken", True) is autoscaler_here


def test_shared_claims_name_a_read_write_many_class():
    claims = [d for d in documents() if d["kind"] == "PersistentVolumeClaim"]
    shared = [c for c in claims if "ReadWriteMany" in c["spec"]["accessModes"]]
    assert shared and all(c["spec"].get("storageClassName") == "facemask-rwx" for c in shared)


# ---- each check can fail


def rayjob() -> dict:
    return copy.deepcopy(
        next(d for d in documents() if d["kind"] == "RayJob" and d["metadata"]["name"] == "facemask-tune")
    )


def test_a_misspelled_field_is_refused():
    doc = rayjob()
    doc["spec"]["shutdownAfterJobFinish"] = doc["spec"].pop("shutdownAfterJobFinishes")
    assert any("shutdownAfterJobFinish" in e for e in crd_errors(doc))
    container = rayjob()
    container["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = (
        "Always"
    )
    assert any("imagePullPolicyy" in e for e in crd_errors(container))
    deployment = copy.deepcopy(next(d for d in documents() if d["kind"] == "Deployment"))
    deployment["spec"]["replica"] = 1
    assert core_errors(deployment)


def test_an_integer_num_gpus_is_refused():
    doc = rayjob()
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"]["num-gpus"] = 1
    errors = crd_errors(doc) + operator_errors(doc, pinned_ray(), project_image())
    assert any("num-gpus" in e for e in errors)


def test_a_wrong_kind_is_refused():
    doc = rayjob()
    doc["kind"] = "RayJobs"
    assert crd_errors(doc)
    service = copy.deepcopy(next(d for d in documents() if d["kind"] == "Service"))
    service["kind"] = "Servise"
    assert core_errors(service)


def test_old_ray_with_token_auth_another_image_and_a_drifted_version_are_refused():
    doc = rayjob()
    doc["spec"]["rayClusterSpec"]["rayVersion"] = "2.48.0"
    doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = (
        "rayproject/ray:2.48.0"
    )
    errors = operator_errors(doc, pinned_ray(), project_image())
    assert any("needs rayVersion >= 2.52.0" in e for e in errors)
    assert any("pins ray==" in e for e in errors)
    assert any("expected facemask:" in e for e in errors)


def test_the_pod_monitor_scrapes_every_ray_pod_where_ray_and_haproxy_export():
    """monitoring.yaml's PodMonitor selects the RayService's head and workers, and its ports are
    where Ray's metrics agent (metrics-export-port) and HAProxy's exporter listen."""
    from facemask.core.runtime import HAPROXY_METRICS_PORT, METRICS_PORT
    from tests.kuberay import manifest, pod_monitor_targets

    monitor = manifest("monitoring.yaml", "PodMonitor")
    cluster = next(d for d in documents() if d["kind"] == "RayService")["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert group["rayStartParams"]["metrics-export-port"] == str(METRICS_PORT)
        assert pod_monitor_targets(monitor, group) == [(METRICS_PORT, "/metrics"), (HAPROXY_METRICS_PORT, "/metrics")]
    # Nothing else carries its labels: the MLflow and Redis pods are not Ray nodes.
    others = [d for d in documents() if d["kind"] == "Deployment"]
    assert others and not any(pod_monitor_targets(monitor, d["spec"]) for d in others)
