"""The manifests and the Dockerfile through the scanners a platform team runs: Checkov's Kubernetes
checks on every pod the project starts (the Ray pods inside the RayJobs and the RayService are
rendered as Pods, since Checkov cannot see into KubeRay's resources) and on the other objects,
Checkov's Dockerfile checks and hadolint on kubernetes/Dockerfile. A finding the project
accepts is skipped where it arises, with its reason: a `checkov.io/skip` annotation on the pod
template, a `checkov:skip` or `hadolint ignore` comment in the Dockerfile. So zero failures is
the bar, and a new field that trips a check fails here.

The scanners live in a virtual environment of their own (`make scanners`: their pins clash
with the project's); without it the test skips and says how to get it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.kuberay import cluster_specs, manifest_paths

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
SCANNERS = Path(os.environ.get("FACEMASK_SCANNERS", ROOT / ".scanners")) / "bin"


def scanner(name: str) -> str:
    path = SCANNERS / name
    if not path.exists():
        pytest.skip(f"{name} not found in {SCANNERS}: `make scanners` installs Checkov and hadolint there")
    return str(path)


def rendered_pods(doc: dict) -> list[dict]:
    """A RayJob's or RayService's pod templates as the Pods KubeRay makes of them."""
    (cluster,) = cluster_specs(doc)
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    pods = []
    for group, spec in groups:
        template = spec["template"]
        metadata = {**template.get("metadata", {}), "name": f"{doc['metadata']['name']}-{group}"}
        metadata["namespace"] = doc["metadata"].get("namespace")  # KubeRay starts them in the resource's
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
    return pods


def scan_folder(tmp_path: Path) -> Path:
    """Every manifest as Checkov reads it: the core objects as they are, KubeRay's as their Pods."""
    out = tmp_path / "rendered"
    out.mkdir()
    for path in manifest_paths():
        docs = []
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            docs += rendered_pods(doc) if doc["kind"] in ("RayJob", "RayService") else [doc]
        (out / path.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


def checkov(*args: str) -> dict:
    run = subprocess.run(
        [scanner("checkov"), *args, "--output", "json", "--compact", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert run.stdout.strip(), run.stderr[-3000:]
    reports = json.loads(run.stdout)
    return {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}


def failures(report: dict) -> list[str]:
    return [
        f"{f['check_id']} {f['check_name']}: {f['file_path']} {f['resource']}"
        for f in report.get("results", {}).get("failed_checks", [])
    ]


def test_checkov_finds_nothing_unexplained_in_any_pod_or_object(tmp_path):
    folder = scan_folder(tmp_path)
    pods = [d for p in folder.glob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d and d["kind"] == "Pod"]
    assert len(pods) == 6, [p["metadata"]["name"] for p in pods]  # 2 RayJobs and the RayService, head and workers
    report = checkov("-d", str(folder), "--framework", "kubernetes")["kubernetes"]
    assert not failures(report), "\n".join(failures(report))
    summary = report["summary"]
    assert summary["passed"] > 100, summary  # the checks ran on every object
    skipped = report["results"].get("skipped_checks", [])
    reasons = {(s["check_id"], s["check_result"].get("suppress_comment", "")) for s in skipped}
    assert skipped and all(len(reason) > 20 for _, reason in reasons), sorted(reasons)  # none "No comment provided"


def test_the_dockerfile_passes_checkov_and_hadolint():
    report = checkov("-f", str(ROOT / "kubernetes" / "Dockerfile"), "--framework", "dockerfile")["dockerfile"]
    assert not failures(report), "\n".join(failures(report))
    hadolint = subprocess.run(
        [scanner("hadolint"), "--no-color", str(ROOT / "kubernetes" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert hadolint.returncode == 0, hadolint.stdout + hadolint.stderr


def test_a_pod_without_its_security_context_is_caught(tmp_path):
    folder = scan_folder(tmp_path)
    path = folder / "rayservice.yaml"
    pods = list(yaml.safe_load_all(path.read_text()))
    pods[0]["spec"]["containers"][0].pop("securityContext")
    pods[0]["spec"].pop("securityContext")
    path.write_text(yaml.safe_dump_all(pods, sort_keys=False))
    for other in folder.glob("*.yaml"):
        if other != path:
            other.unlink()
    found = failures(checkov("-d", str(folder), "--framework", "kubernetes")["kubernetes"])
    assert any("CKV_K8S_20" in f for f in found), found  # allowPrivilegeEscalation
