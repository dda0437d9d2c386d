"""kubernetes/kustomization.yaml: every manifest listed once, each object in one step that the
docs apply in order, and the images named in one place for every pod (the RayJobs' and the
RayService's included), as `kubectl kustomize` renders them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.kuberay import MANIFESTS, manifest_paths

ROOT = Path(__file__).resolve().parents[3]
# As docs/jobs-and-clusters.md applies them: the MLflow server needs the Secret created after
# `base`, the study needs the data loaded after `tracking`, the RayService the study's @champion.
STEPS_IN_ORDER = ["base", "tracking", "study", "serve", "retrain"]
LEFT_OUT = {"secrets.yaml", "monitoring.yaml"}  # a template, and a PodMonitor that needs its operator's CRDs


def kustomization() -> dict:
    return yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())


def listed_objects() -> list[dict]:
    return [d for name in kustomization()["resources"] for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def images(node) -> list[str]:
    """Every container's image anywhere inside `node` (pod templates nested in any resource)."""
    if isinstance(node, list):
        return [image for item in node for image in images(item)]
    if not isinstance(node, dict):
        return []
    found = [c["image"] for key in ("containers", "initContainers") for c in node.get(key) or []]
    return found + [
        image for key, value in node.items() if key not in ("containers", "initContainers") for image in images(value)
    ]


def test_every_manifest_is_listed_once_but_the_secret_template_and_the_optional_monitor():
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {p.name for p in manifest_paths()}
    assert set(listed) == on_disk - LEFT_OUT


def test_each_object_has_one_step_and_the_docs_apply_every_step_in_order():
    steps: dict[str, list[str]] = {}
    for doc in listed_objects():
        step = (doc["metadata"].get("labels") or {}).get("facemask.io/step")
        assert step, f"{doc['kind']}/{doc['metadata']['name']} has no facemask.io/step label"
        steps.setdefault(step, []).append(f"{doc['kind']}/{doc['metadata']['name']}")
    docs = (ROOT / "docs" / "jobs-and-clusters.md").read_text()
    applied = re.findall(r"kubectl apply --server-side -f facemask\.yaml -l facemask\.io/step=(\w+)", docs)
    assert applied == STEPS_IN_ORDER and set(steps) == set(applied)
    assert "kubectl kustomize kubernetes > facemask.yaml" in docs
    assert steps["tracking"] == ["Deployment/mlflow", "Service/mlflow"]
    assert steps["study"] == ["RayJob/facemask-tune"] and "RayService/facemask" in steps["serve"]


def test_kustomize_points_every_project_pod_at_your_registry(tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is absent: its built-in kustomize renders kubernetes/ (no Debian package here has it)")
    digest = "sha256:" + "0123456789abcdef" * 4
    overlay = tmp_path / "yours"
    overlay.mkdir()
    registry = {"name": "facemask", "newName": "registry.example.com/team/facemask", "digest": digest}
    spec = {"resources": [os.path.relpath(MANIFESTS, overlay)], "images": [registry]}
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    run = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    rendered = images([d for d in yaml.safe_load_all(run.stdout) if d])
    source = images(listed_objects())
    ours = [i for i in source if i.split(":")[0] == "facemask"]
    assert len(ours) >= 6 and len(rendered) == len(source)
    assert sorted(rendered) == sorted(
        f"registry.example.com/team/facemask@{digest}" if i in ours else i for i in source
    ), rendered
