"""The model cache on real folders: one download per key, a lost race kept clean, pruning."""

from __future__ import annotations

import os
import time

import pytest

from facemask.core.errors import ConfigError
from facemask.tracking.model_cache import PARTIAL, STALE_PARTIAL_S, cached_download, keep_count, prune


def test_a_key_is_downloaded_once_and_a_new_key_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEMASK_MODEL_CACHE_KEEP", "4")
    calls = []

    def download(folder):
        calls.append(folder)
        (folder / "best.pt").write_bytes(b"weights %d" % len(calls))

    first = cached_download("server|m|1|run-a", download, root=tmp_path)
    again = cached_download("server|m|1|run-a", download, root=tmp_path)
    other = cached_download("server|m|1|run-b", download, root=tmp_path)
    assert first == again != other
    assert len(calls) == 2
    assert (first / "best.pt").read_bytes() == b"weights 1"
    assert (first / ".key").read_text() == "server|m|1|run-a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(PARTIAL)]


def test_a_process_that_loses_the_race_uses_the_winners_copy_and_leaves_nothing(tmp_path):
    def download(folder):
        # Another process finishes the same key while this one downloads.
        winner = cached_download("k", lambda f: (f / "best.pt").write_text("winner"), root=tmp_path)
        assert winner.is_dir()
        (folder / "best.pt").write_text("loser")

    entry = cached_download("k", download, root=tmp_path)
    assert (entry / "best.pt").read_text() == "winner"
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]


def test_a_failed_download_leaves_no_partial_folder(tmp_path):
    def download(folder):
        (folder / "half.pt").write_text("half")
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        cached_download("k", download, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_pruning_keeps_the_most_recently_used_and_spares_live_downloads(tmp_path):
    now = time.time()
    for age, name in enumerate(["newest", "middle", "oldest"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (now - age * 60, now - age * 60))
    dead, live = tmp_path / f"{PARTIAL}dead", tmp_path / f"{PARTIAL}live"
    dead.mkdir()
    live.mkdir()
    os.utime(dead, (now - STALE_PARTIAL_S - 1, now - STALE_PARTIAL_S - 1))
    removed = prune(tmp_path, keep=1, spare=tmp_path / "oldest")
    assert sorted(p.name for p in removed) == [dead.name, "middle"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "newest", "oldest"]


@pytest.mark.parametrize("raw", ["0", "-3", "many"])
def test_a_keep_count_that_is_not_a_positive_number_is_refused(monkeypatch, raw):
    monkeypatch.setenv("FACEMASK_MODEL_CACHE_KEEP", raw)
    with pytest.raises(ConfigError, match="FACEMASK_MODEL_CACHE_KEEP"):
        keep_count()
