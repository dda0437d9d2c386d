"""What every source format is read into: boxes, records and the problems met on the way.

A reader (`voc`, `yolo_folder`, `coco`) turns one item of its format into a `ParseResult`;
everything after it (split, paste, convert) sees only `Record`s, whatever the format.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from facemask.core.classes import IGNORE, map_label

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Larger files are reported as too large without being read: a photo of the set is ~100 KB,
# and a multi-GB file named .jpg must not take the worker's memory.
MAX_FILE_BYTES = 64 * 2**20
# An annotation file (XML, label text, one COCO JSON) is read whole; a larger one is reported, not read.
MAX_ANNOTATION_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Box:
    """One object, in source pixels (x1, y1) top-left to (x2, y2) bottom-right."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    difficult: bool = False


@dataclass(frozen=True)
class Record:
    """One usable image with its valid boxes. `width`/`height` are the real image's."""

    image: str
    annotation: str
    width: int
    height: int
    boxes: tuple[Box, ...]
    image_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "Record":
        data = json.loads(text)
        data["boxes"] = tuple(Box(**b) for b in data["boxes"])
        return Record(**data)

    def class_names(self) -> set[str]:
        return {b.label for b in self.boxes}


@dataclass(frozen=True)
class Problem:
    """Something in the input that was skipped, dropped or corrected, and why.

    `kind` is the counted category (for example "malformed_xml"); `action` says what
    happened to the data: "skipped_file", "dropped_box" or "corrected".
    """

    path: str
    kind: str
    action: str
    reason: str


@dataclass
class ParseResult:
    """What reading one annotation produced: maybe a record, always its problems."""

    annotation: str
    record: Record | None
    problems: list[Problem] = field(default_factory=list)
    # The image this annotation resolved to, even when the record was rejected,
    # so the driver can tell orphans from images that were merely bad.
    image: str | None = None
    annotation_sha256: str = ""
    # Every label the annotation named, mapped or not, with its count: what the unknown-label
    # stop lists, so a user sees the whole vocabulary of their source in one line.
    labels: dict[str, int] = field(default_factory=dict)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_capped(path: Path, limit: int) -> bytes:
    """A file's bytes, or ValueError saying why not: a broken or looping link, a folder, too large."""
    try:
        if path.is_dir():
            raise ValueError("a folder, not a file")
        size = path.stat().st_size
        if size > limit:
            raise ValueError(f"{size / 2**20:.0f} MB, over the {limit / 2**20:.0f} MB limit; not read")
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or type(exc).__name__}); a broken or looping link?") from None


def read_image_size(path: Path) -> tuple[int, int, str]:
    """Decode an image fully and return (width, height, sha256 of its bytes).

    A full decode, not just the header, is what catches truncated files. Raises
    ValueError with the reason when the image cannot be used.
    """
    data = read_capped(path, MAX_FILE_BYTES)
    try:
        # Decode the bytes already read for the fingerprint instead of reading the file twice.
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = img.size
    except Exception as exc:
        # Not just PIL's own errors: once Ultralytics is imported it patches Image.open, and an
        # unidentified file then raises ImportError (it reaches for an optional HEIF plugin).
        raise ValueError(f"unreadable image: {type(exc).__name__}: {exc}") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"image has zero size {width}x{height}")
    return width, height, sha256_bytes(data)


def accept_box(
    label: str | None,
    coords: tuple[float | None, ...],
    size: tuple[int, int],
    where: str,
    class_map: dict[str, str],
    difficult: bool = False,
) -> tuple[Box | None, list[Problem]]:
    """One source object as a Box of a known class clipped to the image, or why it was dropped.

    `coords` are (x1, y1, x2, y2) in source pixels, None where the source had no number.
    """
    name = map_label(label, class_map)
    if name == IGNORE:
        return None, [Problem(where, "ignored_class", "dropped_box", f"label {label!r} is mapped to {IGNORE}")]
    if name is None:
        reason = (
            f"label {label!r} is no class of the detector; map it with --class-map {label}=CLASS or pass --drop-unknown"
        )
        return None, [Problem(where, "unknown_class", "dropped_box", reason)]
    if len(coords) != 4 or any(c is None for c in coords):
        return None, [Problem(where, "bad_box", "dropped_box", "the box lacks a numeric x1, y1, x2 or y2")]
    width, height = size
    x1, y1, x2, y2 = (float(c) for c in coords)  # type: ignore[arg-type]
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    box = f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g})"
    if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
        return None, [Problem(where, "empty_box", "dropped_box", f"{box} has no area inside the image")]
    problems = []
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        problems.append(Problem(where, "box_clipped", "corrected", f"{box} clipped to {width}x{height}"))
    return Box(name, cx1, cy1, cx2, cy2, difficult), problems


def check_declared_size(
    declared: tuple[float | None, float | None], where: str, width: int, height: int
) -> list[Problem]:
    """The image's real size wins over the one the annotation declares; a missing or different one is reported."""
    if declared[0] is None or declared[1] is None:
        return [Problem(where, "size_missing", "corrected", f"no size declared; used the image's {width}x{height}")]
    if (int(declared[0]), int(declared[1])) != (width, height):
        said = f"{int(declared[0])}x{int(declared[1])}"
        return [
            Problem(
                where,
                "size_mismatch",
                "corrected",
                f"declares {said} but the image is {width}x{height}; trusted the image",
            )
        ]
    return []


def skip_image(result: ParseResult, image: Path, reason: str) -> ParseResult:
    """Record an image that cannot be decoded as a skipped file, with how to fix it."""
    result.problems.append(Problem(str(image), "unreadable_image", "skipped_file", f"{reason}; re-export the image"))
    return result


def orphan_image_problems(images: list[Path], claimed: set[str]) -> list[Problem]:
    """Problems for images that no annotation resolved to."""
    return [
        Problem(str(p), "image_without_annotation", "skipped_file", "no annotation names this image; add its XML")
        for p in images
        if str(p) not in claimed
    ]
