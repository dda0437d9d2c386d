"""Which dataset version trained which registered version, from the registry alone.

Training logs its prepared dataset as an MLflow dataset input: its fingerprint as the digest,
and a profile of what it is made of (`facemask.core.manifest.dataset_profile`): the hash of
its own splits.json, and, for a version made with `data prepare --keep-splits`, the hash and
path of the splits it kept. A dataset whose kept splits are another's own splits was built on
it. `lineage` follows those links for every version of a registered model, so the chain from a
base set to each newly labelled version, and the models each trained, can be read without the
prepared folders.
"""

from __future__ import annotations

import json
from typing import Any


def _training_dataset(run) -> dict[str, Any] | None:
    """The dataset a run trained on: its first input with context `training`."""
    for item in run.inputs.dataset_inputs if run is not None and run.inputs else []:
        contexts = {t.value for t in item.tags if t.key == "mlflow.data.context"}
        if "training" in contexts or not contexts:
            dataset = item.dataset
            try:
                profile = json.loads(dataset.profile) if dataset.profile else {}
                source = json.loads(dataset.source).get("uri", dataset.source)
            except (ValueError, AttributeError):
                profile, source = {}, dataset.source
            return {"name": dataset.name, "digest": dataset.digest, "source": source, "profile": profile}
    return None


def lineage(name: str, tracking_uri: str) -> dict[str, Any]:
    """Every version of registered model `name` with the dataset that trained it, and every such
    dataset with the one it was built on (`built_on`: a digest, or None for a base set)."""
    from mlflow.exceptions import MlflowException

    from facemask.tracking import client
    from facemask.tracking.registry import aliases_and_tags

    store = client(tracking_uri)
    aliases, _ = aliases_and_tags(name, tracking_uri)
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    versions, datasets, runs = [], {}, {}
    for mv in sorted(store.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        run_id = mv.run_id
        if run_id and run_id not in runs:
            try:
                runs[run_id] = store.get_run(run_id)
            except MlflowException:  # a deleted run: the version is listed without its dataset
                runs[run_id] = None
        dataset = _training_dataset(runs.get(run_id)) if run_id else None
        if dataset is not None:
            datasets.setdefault(dataset["digest"], dataset)
        versions.append(
            {
                "version": str(mv.version),
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "run_id": run_id,
                "dataset": dataset["digest"] if dataset else None,
                "test_split": mv.tags.get("test.data.split"),
                "test_mAP50": mv.tags.get("test_mAP50"),
            }
        )
    own = {d["profile"].get("splits_sha256"): digest for digest, d in datasets.items() if d["profile"]}
    for dataset in datasets.values():
        kept = dataset["profile"].get("kept_splits") or {}
        parent = own.get(kept.get("sha256")) if kept else None
        dataset["built_on"] = parent if parent != dataset["digest"] else None
        dataset["kept_splits_from"] = kept.get("from")
        dataset["added"] = kept.get("added")
    return {"registered_model": name, "versions": versions, "datasets": list(datasets.values())}


def short(value: str | None) -> str:
    """A digest's first 12 characters, as git shortens a commit."""
    return (value or "-")[:12]


def format_lineage(found: dict[str, Any]) -> str:
    """Two tables: the versions with their datasets, and the datasets with what each was built on."""
    lines = [f"{found['registered_model']}: versions and the datasets that trained them"]
    lines.append(f"  {'version':>7}  {'aliases':<18} {'dataset':<13} {'test split':<13} {'test mAP50':<10} run")
    for v in found["versions"]:
        aliases = ",".join(f"@{a}" for a in v["aliases"]) or "-"
        lines.append(
            f"  {v['version']:>7}  {aliases:<18} {short(v['dataset']):<13} {short(v['test_split']):<13} "
            f"{v['test_mAP50'] or '-':<10} {v['run_id'] or '-'}"
        )
    lines.append("datasets")
    lines.append(f"  {'dataset':<13} {'built on':<13} {'images train/val/test':<22} {'added':<12} source")
    for d in found["datasets"]:
        images = d["profile"].get("images") or {}
        sizes = "/".join(str(images.get(s, "?")) for s in ("train", "val", "test")) if images else "-"
        added = d.get("added") or {}
        grew = f"+{sum(v for v in added.values() if isinstance(v, int))}" if added else "-"
        built_on = short(d["built_on"]) if d["built_on"] else ("(unknown)" if d["kept_splits_from"] else "base set")
        lines.append(f"  {short(d['digest']):<13} {built_on:<13} {sizes:<22} {grew:<12} {d['source']}")
    if not found["datasets"]:
        lines.append("  none recorded (versions trained before this release, or registered from outside facemask)")
    return "\n".join(lines)
