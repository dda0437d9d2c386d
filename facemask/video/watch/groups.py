"""The reader processes: cameras packed up to `--cameras-per-reader` to a Ray actor.

Each Ray call costs the same whatever it carries: about 6 ms of CPU per frame at 1080p 15 fps
went to Ray's transport (the call, the object store, the raylet and GCS) when every camera had
an actor of its own, as much as decoding and resizing together (docs/cameras.md). A process
reading K cameras answers one `next_frames` call with the newest frame of each of them, as one
object: K frames for one call.

    ReaderGroup (the actor, in its process): a CameraReader thread per camera, one call for all.
    ReaderPool (the runner's side): places cameras in groups with room, keeps one `next_frames`
        call out per group, reads statuses without waiting, and hands out a FrameRef per frame.

A group is told its cameras with every call (`version`, `cameras`): one that Ray restarts after
its process died learns them from the call Ray sends it again, and reads them from there. The
price of packing is isolation: a reader process that dies takes its K cameras with it until Ray
starts it again (about a second); `--cameras-per-reader 1` gives every camera its own process.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facemask.video.watch.cameras import Camera
from facemask.video.watch.reader import CameraReader

log = logging.getLogger("facemask.video.watch.runner")  # said as the runner's, where a user looks


_resolved = threading.local()  # per thread: the object a FrameRef.get last resolved


@dataclass(frozen=True)
class FrameRef:
    """One camera's frame inside the object its group's call returned: (the object, its index)."""

    ref: Any
    index: int

    def get(self, timeout: float = 5.0) -> np.ndarray:
        """The frame. A thread taking the frames of one call in turn (the clips' and samples'
        threads get every camera's) resolves their object once: it keeps the last one it resolved."""
        import ray

        last = getattr(_resolved, "last", None)
        if last is None or last[0] != self.ref:
            last = _resolved.last = (self.ref, ray.get(self.ref, timeout=timeout))
        return last[1][self.index]


class ReaderGroup:
    """Reads its cameras, one CameraReader thread each; the Ray actor behind a ReaderPool's group."""

    def __init__(self, size: int, fast_decode: bool = False) -> None:
        self.size, self.fast_decode = size, fast_decode
        self.readers: dict[str, tuple[int, CameraReader]] = {}  # camera id: (serial, reader)
        self.version = -1
        self.fresh = threading.Event()  # set by any of the cameras' threads when a frame comes
        self.lock = threading.Lock()

    def _sync(self, version: int, cameras: list[tuple[int, Camera]]) -> None:
        """Read exactly `cameras` ((serial, camera): a new serial is a camera started anew). The
        process's two calls run on two threads, so an older list can come after a newer one: it is
        passed over."""
        with self.lock:
            if version <= self.version:
                return
            wanted = {camera.id: (serial, camera) for serial, camera in cameras}
            for camera_id, (serial, reader) in list(self.readers.items()):
                if wanted.get(camera_id, (None,))[0] != serial:
                    reader.stop(wait=False)  # its stream closes on its own thread; the others go on
                    del self.readers[camera_id]
            for camera_id, (serial, camera) in wanted.items():
                if camera_id not in self.readers:
                    reader = CameraReader(camera, self.size, self.fast_decode, fresh=self.fresh)
                    self.readers[camera_id] = (serial, reader)
            self.version = version

    def next_frames(
        self, version: int, cameras: list[tuple[int, Camera]], timeout_s: float = 1.0
    ) -> tuple[list[dict], list[np.ndarray]]:
        """The newest frame not yet taken of each camera that has one, waiting up to `timeout_s`
        for the first: (metadata, frames), in the same order. One call per group and frame time."""
        self._sync(version, cameras)
        self.fresh.wait(timeout_s)
        self.fresh.clear()  # before taking: a frame that comes meanwhile sets it again
        metas, frames = [], []
        for _, reader in list(self.readers.values()):
            meta, frame = reader.latest()
            if meta is not None:
                metas.append(meta)
                frames.append(frame)
        return metas, frames

    def status(self, version: int, cameras: list[tuple[int, Camera]]) -> dict[str, dict[str, Any]]:
        self._sync(version, cameras)
        return {camera_id: reader.status() for camera_id, (_, reader) in list(self.readers.items())}


@dataclass
class Group:
    """A reader process as the runner holds it."""

    handle: Any
    cameras: dict[str, tuple[int, Camera]] = field(default_factory=dict)
    version: int = 0
    pending: tuple | None = None  # (metas ref, frames ref) of the next_frames call out
    status_call: tuple | None = None  # (ref, sent at) of the status call not yet answered

    def told(self) -> tuple[int, list[tuple[int, Camera]]]:
        return self.version, list(self.cameras.values())


class ReaderPool:
    """The runner's readers: `add` and `remove` cameras, `frames()` and `statuses()` never wait."""

    def __init__(self, per_process: int, size: int, fast_decode: bool, reader_cpus: float) -> None:
        import ray

        self.per_process = per_process
        self.args = (size, fast_decode)
        # Two threads: one for the waiting `next_frames` call, one for `status`. A reader process that
        # dies is started again by Ray, and the calls it held are sent to the new one.
        self.actor_class = ray.remote(ReaderGroup).options(
            num_cpus=reader_cpus * per_process, max_restarts=-1, max_task_retries=-1, max_concurrency=2
        )
        self.groups: list[Group] = []
        self.of: dict[str, Group] = {}
        self.serial = 0

    def add(self, camera: Camera) -> None:
        """Read `camera` (started anew if its id is read already) in a group with room, or a new one."""
        if camera.id in self.of:
            self.remove(camera.id)
        group = next((g for g in self.groups if len(g.cameras) < self.per_process), None)
        if group is None:
            group = Group(self.actor_class.remote(*self.args))
            self.groups.append(group)
        self.serial += 1
        group.cameras[camera.id] = (self.serial, camera)
        group.version += 1
        self.of[camera.id] = group

    def remove(self, camera_id: str) -> None:
        import ray

        group = self.of.pop(camera_id, None)
        if group is None:
            return
        del group.cameras[camera_id]
        group.version += 1  # its reader stops at the group's next call
        if not group.cameras:
            self.groups.remove(group)
            ray.kill(group.handle)

    def frames(self) -> list[tuple[str, dict, FrameRef]]:
        """(camera id, metadata, frame) of every frame the groups' calls brought since the last
        look; each group answered is asked again at once."""
        import ray

        for group in self.groups:
            if group.pending is None:
                group.pending = self._ask(group)
        groups = list(self.groups)
        ready, _ = ray.wait([g.pending[0] for g in groups], num_returns=len(groups), timeout=0)
        ready_set, came = set(ready), []
        for group in groups:
            if group.pending[0] not in ready_set:
                continue
            metas_ref, frames_ref = group.pending
            group.pending = self._ask(group)
            try:
                metas = ray.get(metas_ref)
            except ray.exceptions.RayError as exc:  # its frames this time are lost; Ray restarts the process
                log.warning(
                    "cameras %s: their reader failed (%s); Ray restarts it",
                    ", ".join(group.cameras),
                    type(exc).__name__,
                )
                continue
            for index, meta in enumerate(metas):
                if meta["camera"] in group.cameras:  # not one removed since the call was sent
                    came.append((meta["camera"], meta, FrameRef(frames_ref, index)))
        return came

    def _ask(self, group: Group) -> tuple:
        return group.handle.next_frames.options(num_returns=2).remote(*group.told())

    def statuses(self, now: float) -> tuple[dict[str, dict | None], dict[str, float]]:
        """The statuses answered since the last look, per camera (None: its process died, Ray is
        starting it again), and when each camera's unanswered status call was sent. Never waits:
        each group has at most one status call out."""
        import ray

        for group in self.groups:
            if group.status_call is None:
                group.status_call = (group.handle.status.remote(*group.told()), now)
        asked = {g.status_call[0]: g for g in self.groups}
        ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=0)
        answered: dict[str, dict] = {}
        for ref in ready:
            group = asked[ref]
            group.status_call = None
            try:
                said = ray.get(ref)
            except ray.exceptions.RayError:
                said = dict.fromkeys(group.cameras)
            answered.update({k: v for k, v in said.items() if k in group.cameras})
        waiting = {c: g.status_call[1] for g in self.groups if g.status_call is not None for c in g.cameras}
        return answered, waiting

    def close(self) -> None:
        import ray

        for group in self.groups:
            ray.kill(group.handle)
        self.groups.clear()
        self.of.clear()
