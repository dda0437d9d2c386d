"""A snapshot per event: the frame where its person scored highest, faces blurred by default
(a clip, when asked for, comes from facemask.events.clips).

Mask compliance films faces, and privacy law covers what is kept. So every face box in a
stored snapshot is blurred (`all`, the default); `others` keeps the subject's face for
review and blurs the rest; `none` is the operator's explicit choice. The subject's box is
outlined in every mode. The blur is strong enough that no face stays recognisable: a box
averaged down to about 6 x 6 blocks, then smoothed.

Snapshots and clips live under `<out>/events/<camera>/`; the oldest go first once the folder
passes its size limit, and any older than its age limit go at the next write.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

BLOCKS = 6  # a blurred face keeps about this many blocks across: its colours, not its features
OUTLINE = (255, 64, 64)  # the subject's box, in RGB


def blur_faces(frame: np.ndarray, boxes: list[dict], keep: dict | None = None) -> np.ndarray:
    """A copy of `frame` (H x W x 3) with each box in `boxes` blurred, except `keep`."""
    import cv2

    out = frame.copy()
    height, width = out.shape[:2]
    for box in boxes:
        if keep is not None and box == keep:
            continue
        x1, y1 = max(0, int(box["x1"])), max(0, int(box["y1"]))
        x2, y2 = min(width, int(np.ceil(box["x2"]))), min(height, int(np.ceil(box["y2"])))
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        face = out[y1:y2, x1:x2]
        small = cv2.resize(face, (BLOCKS, BLOCKS), interpolation=cv2.INTER_AREA)
        coarse = cv2.resize(small, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
        out[y1:y2, x1:x2] = cv2.GaussianBlur(coarse, (0, 0), sigmaX=max(1.0, (x2 - x1) / BLOCKS / 2))
    return out


def redacted(frame: np.ndarray, boxes: list[dict], subject: dict | None, blur: str) -> np.ndarray:
    """A copy of `frame` as evidence keeps it (a snapshot, each frame of a clip): faces blurred per
    `blur` (all; others: all but the subject's; none), the subject outlined when it is there."""
    import cv2

    if blur == "all":
        image = blur_faces(frame, boxes)
    elif blur == "others":  # without the subject in the frame, every face is blurred
        image = blur_faces(frame, boxes, keep=subject)
    else:
        image = frame.copy()
    if subject is not None:
        p1 = (int(subject["x1"]), int(subject["y1"]))
        p2 = (int(subject["x2"]), int(subject["y2"]))
        cv2.rectangle(image, p1, p2, OUTLINE, 2)
    return image


def snapshot(frame: np.ndarray, boxes: list[dict], subject: dict, blur: str) -> bytes:
    """The event's JPEG: faces blurred per `blur` (all, others, none), the subject outlined."""
    import cv2

    image = redacted(frame, boxes, subject, blur)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("the snapshot could not be encoded as JPEG")
    return data.tobytes()


class EvidenceStore:
    """Snapshots and clips on disk, within `max_bytes` and `max_age_s` together; a snapshot may
    have a JSON sidecar (the sample pool's pre-labels), written first and deleted with it. The
    watch's loop writes snapshots and the clip thread clips, so a lock keeps their pruning apart."""

    KINDS = (".jpg", ".webm")

    def __init__(self, root: Path, max_bytes: float, max_age_s: float) -> None:
        self.root, self.max_bytes, self.max_age_s = root, max_bytes, max_age_s
        self.pruned = 0
        self.lock = threading.Lock()

    def path(self, camera: str, key: str, suffix: str = ".jpg") -> Path:
        return self.root / camera / f"{key}{suffix}"

    def write(self, camera: str, key: str, jpeg: bytes, sidecar: dict | None = None) -> Path:
        import json

        path = self.path(camera, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if sidecar is not None:  # before the image: an image never lacks its labels
            side = path.with_suffix(".json")
            side.with_suffix(".json.tmp").write_text(json.dumps(sidecar, sort_keys=True))
            side.with_suffix(".json.tmp").replace(side)
        partial = path.with_suffix(".jpg.tmp")
        partial.write_bytes(jpeg)
        return self.keep(partial, path)

    def keep(self, partial: Path, path: Path) -> Path:
        """Move a finished file into place (whole or absent, never half a file), then prune."""
        partial.replace(path)
        self.prune()
        return path

    def prune(self, now: float | None = None) -> int:
        """Delete files past the age limit, then the oldest until the folder fits; returns how many."""
        now = time.time() if now is None else now
        with self.lock:
            files = []
            for suffix in self.KINDS:
                for path in self.root.glob(f"*/*{suffix}"):
                    if path.name.endswith(".part.webm"):  # a clip being written
                        continue
                    try:
                        stat = path.stat()
                    except FileNotFoundError:  # a sample pruned by its own pool meanwhile
                        continue
                    files.append((stat.st_mtime, stat.st_size, path))
            files.sort()
            total, removed = sum(size for _, size, _ in files), 0
            for mtime, size, path in files:
                if now - mtime <= self.max_age_s and total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                path.with_suffix(".json").unlink(missing_ok=True)
                total, removed = total - size, removed + 1
            self.pruned += removed
        return removed
