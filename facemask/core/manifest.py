"""The prepared dataset's manifest (`manifest.json` beside data.yaml) and its fingerprint.

A leaf: preparation writes the manifest; training, tuning and evaluation read its
fingerprint to tie every run and registered version to the exact data it saw.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"


def write_manifest(out: Path, manifest: dict) -> Path:
    path = out / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(data_yaml: Path) -> dict:
    """The manifest written by `facemask data prepare` next to data.yaml (empty if absent)."""
    manifest = Path(data_yaml).parent / MANIFEST_NAME
    return json.loads(manifest.read_text()) if manifest.is_file() else {}


def data_fingerprint(data_yaml: Path) -> str:
    """The manifest's input fingerprint; for a hand-written data.yaml, the hash of that file."""
    manifest = read_manifest(data_yaml)
    return manifest.get("fingerprint") or hashlib.sha256(Path(data_yaml).read_bytes()).hexdigest()


PROFILE_FORMAT = 1


def dataset_profile(data_yaml: Path) -> dict[str, Any]:
    """What training records of a prepared dataset beside its fingerprint: its splits' hash and
    size, and the splits it kept (`--keep-splits`). Empty for a hand-written data.yaml."""
    folder = Path(data_yaml).parent
    splits = folder / "splits.json"
    if not splits.is_file():
        return {}
    manifest = read_manifest(data_yaml)
    counts = manifest.get("counts", {})
    profile: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "splits_sha256": hashlib.sha256(splits.read_bytes()).hexdigest(),
        # The photos each split holds (train's synthetic images are made from them, not counted).
        "images": {s: (counts.get(s) or {}).get("images", {}).get("original") for s in ("train", "val", "test")},
    }
    kept = manifest.get("kept_splits")
    if kept:
        profile["kept_splits"] = {"sha256": kept.get("sha256"), "from": kept.get("from"), "added": kept.get("added")}
    return profile
