"""The prepared dataset's manifest (`manifest.json` beside data.yaml) and its fingerprint.

A leaf: preparation writes the manifest; training, tuning and evaluation read its
fingerprint to tie every run and registered version to the exact data it saw.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
