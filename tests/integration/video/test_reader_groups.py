"""The watch's reader processes (facemask.video.watch.groups) on the session's Ray instance, with
real H.264 files as cameras: cameras packed a few to a process, one call bringing all their
frames, cameras coming and going without touching their neighbours, and a killed process that
Ray restarts reading its cameras again from the call it is sent."""

from __future__ import annotations

import os
import signal
import time

import pytest

from facemask.video.watch.cameras import Camera
from tests.services import wait_until
from tests.streams import make_video

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    if __import__("shutil").which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (Debian's ffmpeg; .ci/run installs it)")
    return make_video(tmp_path_factory.mktemp("video") / "hall.mkv", 160, 120, fps=15, seconds=2)


@pytest.fixture()
def pool(ray_local):
    from facemask.video.watch.groups import ReaderPool

    pool = ReaderPool(per_process=2, size=96, fast_decode=False, reader_cpus=0)
    yield pool
    pool.close()


def collect(pool, seconds_of_frames: float, wanted: set[str]) -> dict[str, list]:
    """Frames per camera until every camera in `wanted` has brought `seconds_of_frames` at 15 fps."""
    came: dict[str, list] = {}

    def enough() -> bool:
        for camera, meta, frame in pool.frames():
            came.setdefault(camera, []).append((meta, frame))
        return all(len(came.get(c, [])) >= 15 * seconds_of_frames for c in wanted)

    wait_until(enough, 60, f"{seconds_of_frames} s of frames from {sorted(wanted)}", interval=0.02)
    return came


def pids(pool, cameras: set[str]) -> dict[str, int]:
    found: dict[str, int] = {}

    def answered() -> bool:
        said, _ = pool.statuses(time.time())
        found.update({c: s["pid"] for c, s in said.items() if s and s.get("state") == "live"})
        return cameras <= set(found)

    wait_until(answered, 60, f"the statuses of {sorted(cameras)}", interval=0.1)
    return {c: found[c] for c in cameras}


def test_cameras_share_a_process_and_one_call_brings_each_ones_newest_frame(pool, video):
    for name in ("a", "b", "c"):
        pool.add(Camera(name, str(video), fps=15))
    assert len(pool.groups) == 2  # two to a process: a and b together, c alone
    where = pids(pool, {"a", "b", "c"})
    assert where["a"] == where["b"] != where["c"]

    came = collect(pool, 1.0, {"a", "b", "c"})
    for camera, frames in came.items():
        metas = [meta for meta, _ in frames]
        assert all(m["camera"] == camera for m in metas)
        assert [m["index"] for m in metas] == sorted({m["index"] for m in metas})  # each frame once, in order
        meta, frame = frames[-1]
        image = frame.get()
        assert image.shape == (meta["height"], meta["width"], 3) and max(image.shape) == 96
    # Each call of the shared process brought a's and b's frames together at least some of the time.
    shared = {}
    for camera in ("a", "b"):
        for _, frame in came[camera]:
            shared.setdefault(frame.ref, set()).add(camera)
    assert any(cameras == {"a", "b"} for cameras in shared.values())


def test_cameras_come_and_go_without_touching_their_neighbours(pool, video):
    for name in ("a", "b"):
        pool.add(Camera(name, str(video), fps=15))
    before = pids(pool, {"a", "b"})
    collect(pool, 0.5, {"a", "b"})

    pool.remove("b")
    assert set(pool.of) == {"a"} and len(pool.groups) == 1
    came = collect(pool, 1.0, {"a"})
    assert set(came) == {"a"}  # b's frames stop with its removal: none came after it

    pool.add(Camera("c", str(video), fps=10))  # into the room b left, in the same process
    assert pids(pool, {"a", "c"}) == {"a": before["a"], "c": before["a"]}
    wait_until(lambda: (pool.statuses(time.time())[0].get("a") or {}).get("decoded", 0) > 30, 30, "a reading on")
    assert set(pool.statuses(time.time())[0]) <= {"a", "c"}

    pool.remove("a")
    pool.remove("c")
    assert pool.groups == [] and pool.of == {}  # an empty process is ended


def test_a_killed_reader_process_comes_back_reading_its_cameras(pool, video):
    for name in ("a", "b"):
        pool.add(Camera(name, str(video), fps=15))
    before = pids(pool, {"a", "b"})
    collect(pool, 0.5, {"a", "b"})
    os.kill(before["a"], signal.SIGKILL)

    def back() -> bool:
        said, _ = pool.statuses(time.time())
        return all(
            s and s.get("pid") not in (None, before["a"]) and s.get("decoded", 0) > 5 for s in said.values()
        ) and (len(said) == 2)

    wait_until(back, 60, "both cameras read again by the restarted process", interval=0.2)
    came = collect(pool, 0.5, {"a", "b"})  # and their frames flow again
    assert set(came) == {"a", "b"}


def test_an_older_camera_list_arriving_late_changes_nothing(video):
    """A process's status and frames calls run on two threads: a status call sent before a camera
    was added can be served after the frames call that added it, and must not stop it."""
    from facemask.video.watch.groups import ReaderGroup

    group = ReaderGroup(96)
    a, b = Camera("a", str(video), fps=15), Camera("b", str(video), fps=15)
    try:
        group.status(1, [(1, a)])
        group.next_frames(2, [(1, a), (2, b)], timeout_s=0)
        first_b = group.readers["b"][1]
        assert set(group.status(1, [(1, a)])) == {"a", "b"}  # the late, older list is passed over
        assert group.readers["b"][1] is first_b and not first_b.stopping.is_set()
    finally:
        for _, reader in group.readers.values():
            reader.stop()
