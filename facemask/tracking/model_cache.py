"""A bounded, shared cache of downloaded model versions.

Every replica, camera watcher, gate and rollback resolves its model from the registry. A fresh
temporary folder per download left each one behind: a server that rolled back a few times a day
filled its disk. Here each version is downloaded once per machine, into a folder named by what
makes it unique (the server, the version and its run), and the least recently used beyond
`FACEMASK_MODEL_CACHE_KEEP` are removed.

A download lands in a `.partial-*` folder and is renamed into place, so processes that fetch the
same version at once (replicas starting together) never see half a model: the first rename wins
and the others discard their copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from facemask.core.errors import ConfigError
from facemask.core.runtime import cache_dir

log = logging.getLogger(__name__)

CACHE_ENV = "FACEMASK_MODEL_CACHE"
KEEP_ENV = "FACEMASK_MODEL_CACHE_KEEP"
DEFAULT_KEEP = 16
PARTIAL = ".partial-"
# A partial folder this old belongs to a download that died; younger ones may still be filling.
STALE_PARTIAL_S = 3600


def cache_root() -> Path:
    """FACEMASK_MODEL_CACHE, else ~/.cache/facemask/models (XDG_CACHE_HOME respected)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return cache_dir("models")


def keep_count() -> int:
    raw = os.environ.get(KEEP_ENV, str(DEFAULT_KEEP))
    try:
        keep = int(raw)
    except ValueError:
        keep = 0
    if keep < 1:
        raise ConfigError(f"{KEEP_ENV}={raw!r}: expected a whole number of versions to keep, at least 1")
    return keep


def cached_download(key: str, download: Callable[[Path], object], root: Path | None = None) -> Path:
    """The folder holding what `download(folder)` writes for `key`, downloaded only if no process
    on this machine has done it before. `key` must change whenever the content may."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    entry = root / hashlib.sha256(key.encode()).hexdigest()[:32]
    if entry.is_dir():
        os.utime(entry)  # recently used: the last to be pruned
        return entry
    partial = Path(tempfile.mkdtemp(prefix=PARTIAL, dir=root))
    try:
        download(partial)
        (partial / ".key").write_text(key + "\n")
        try:
            partial.rename(entry)
        except OSError:
            if not entry.is_dir():
                raise
            # Another process finished the same download first; its copy is the same.
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    prune(root, keep_count(), spare=entry)
    return entry


def prune(root: Path, keep: int, spare: Path | None = None) -> list[Path]:
    """Remove all but the `keep` most recently used entries (never `spare`) and partial folders
    of dead downloads; return what was removed."""
    now = time.time()
    entries, removed = [], []
    for child in root.iterdir():
        if not child.is_dir():
            continue
        if child.name.startswith(PARTIAL):
            if now - child.stat().st_mtime > STALE_PARTIAL_S:
                removed.append(child)
            continue
        entries.append(child)
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed += [p for p in entries[keep:] if p != spare]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    if removed:
        log.info("model cache %s: removed %d old download(s), keeping %d", root, len(removed), keep)
    return removed
