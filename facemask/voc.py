"""Read and validate a Pascal VOC dataset (the Kaggle "Face Mask Detection" layout).

Every function here is pure and per-file, so the pipeline can run it in one process or
as a Ray Data `map`. Nothing valid is lost and nothing bad crashes the run: a bad file
becomes a `Problem` with its path and reason, and the pipeline counts and reports it.
"""

from __future__ import annotations

import hashlib
import io
import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from facemask.classes import CLASS_IDS
from facemask.errors import InputNotFoundError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Larger files are reported as too large without being read: a photo of the set is ~100 KB,
# and a multi-GB file named .jpg must not take the worker's memory.
MAX_FILE_BYTES = 64 * 2**20
MAX_XML_BYTES = 4 * 2**20


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


def find_source_files(source: Path) -> tuple[list[Path], list[Path], Path]:
    """List the annotation and image files of a VOC source folder.

    Accepts the Kaggle layout (`annotations/` + `images/`). Raises FileNotFoundError
    naming the folder and the expected layout when it is not there.
    """
    source = Path(source)
    ann_dir, img_dir = source / "annotations", source / "images"
    if not source.is_dir():
        raise InputNotFoundError(f"{source}: no such folder; pass --source DIR with annotations/ and images/ inside")
    if not ann_dir.is_dir() or not img_dir.is_dir():
        raise InputNotFoundError(
            f"{source}: expected the Kaggle VOC layout with annotations/*.xml and images/*; "
            f"found {sorted(p.name for p in source.iterdir())[:10]}"
        )
    annotations = sorted(p for p in ann_dir.iterdir() if p.suffix.lower() == ".xml")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    return annotations, images, img_dir


def resolve_image(filename: str | None, xml_path: Path, images_dir: Path) -> Path | None:
    """Find an annotation's image: by `<filename>` first, else by stem with any image extension.

    The shared copy of the Kaggle set is JPEG while its XML still names `.png`, so the
    stem fallback is the normal path there, not an edge case.
    """
    if filename:
        direct = images_dir / Path(filename).name
        if direct.is_file():
            return direct
    stems = [Path(filename).stem] if filename else []
    stems.append(xml_path.stem)
    for stem in stems:
        for ext in IMAGE_EXTENSIONS:
            for candidate in (images_dir / f"{stem}{ext}", images_dir / f"{stem}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def _text(element: ET.Element | None, tag: str) -> str | None:
    """Stripped text of a child, ignoring stray text and whitespace around it."""
    if element is None:
        return None
    child = element.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip() or None


def _number(element: ET.Element | None, tag: str) -> float | None:
    value = _text(element, tag)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _sha256(data: bytes) -> str:
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
    return width, height, _sha256(data)


def check_declared_size(root, xml_path: Path, width: int, height: int) -> list[Problem]:
    """The image's real size wins over <size>; a missing or different one is reported as corrected."""
    size = root.find("size")
    declared = (_number(size, "width"), _number(size, "height"))
    if declared[0] is None or declared[1] is None:
        return [
            Problem(str(xml_path), "size_missing", "corrected", f"<size> missing; used the image's {width}x{height}")
        ]
    if (int(declared[0]), int(declared[1])) != (width, height):
        said = f"{int(declared[0])}x{int(declared[1])}"
        reason = f"<size> says {said} but the image is {width}x{height}; trusted the image"
        return [Problem(str(xml_path), "size_mismatch", "corrected", reason)]
    return []


def parse_objects(root, xml_path: Path, width: int, height: int) -> tuple[list[Box], list[Problem]]:
    """Every usable <object> as a Box clipped to the image; each dropped or clipped one as a Problem."""
    boxes: list[Box] = []
    problems: list[Problem] = []
    for index, obj in enumerate(root.iter("object")):
        where = f"{xml_path} object #{index}"
        label = _text(obj, "name")
        if label not in CLASS_IDS:
            valid = ", ".join(CLASS_IDS)
            problems.append(Problem(where, "unknown_class", "dropped_box", f"unknown class {label!r}; valid: {valid}"))
            continue
        bnd = obj.find("bndbox")
        coords = [_number(bnd, tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
        if any(c is None for c in coords):
            reason = "<bndbox> lacks a numeric xmin, ymin, xmax or ymax"
            problems.append(Problem(where, "bad_box", "dropped_box", reason))
            continue
        x1, y1, x2, y2 = (float(c) for c in coords)  # type: ignore[arg-type]
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
        box = f"box ({x1}, {y1}, {x2}, {y2})"
        if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
            problems.append(Problem(where, "empty_box", "dropped_box", f"{box} has no area inside the image"))
            continue
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            problems.append(Problem(where, "box_clipped", "corrected", f"{box} clipped to {width}x{height}"))
        boxes.append(Box(label, cx1, cy1, cx2, cy2, _text(obj, "difficult") == "1"))
    return boxes, problems


def parse_annotation(xml_path: Path | str, images_dir: Path | str) -> ParseResult:
    """Parse one VOC XML file against its real image. Never raises for bad input."""
    xml_path, images_dir = Path(xml_path), Path(images_dir)
    result = ParseResult(annotation=str(xml_path), record=None)

    def skip(kind: str, reason: str) -> ParseResult:
        result.problems.append(Problem(str(xml_path), kind, "skipped_file", reason))
        return result

    try:
        raw = read_capped(xml_path, MAX_XML_BYTES)
    except ValueError as exc:
        return skip("unreadable_annotation", f"{exc}; fix or remove the file")
    result.annotation_sha256 = _sha256(raw)

    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        return skip("malformed_xml", f"malformed XML ({exc}); fix or remove the file")

    image_path = resolve_image(_text(root, "filename"), xml_path, images_dir)
    if image_path is None:
        return skip(
            "annotation_without_image",
            f"no image for <filename>{_text(root, 'filename')}</filename> nor for stem "
            f"{xml_path.stem!r} in {images_dir}",
        )
    result.image = str(image_path)
    try:
        width, height, image_sha = read_image_size(image_path)
    except ValueError as exc:
        result.problems.append(
            Problem(str(image_path), "unreadable_image", "skipped_file", f"{exc}; re-export the image")
        )
        return result

    result.problems += check_declared_size(root, xml_path, width, height)
    boxes, problems = parse_objects(root, xml_path, width, height)
    result.problems += problems

    result.record = Record(
        image=str(image_path),
        annotation=str(xml_path),
        width=width,
        height=height,
        boxes=tuple(boxes),
        image_sha256=image_sha,
    )
    return result


def orphan_image_problems(images: list[Path], claimed: set[str]) -> list[Problem]:
    """Problems for images that no annotation resolved to."""
    return [
        Problem(str(p), "image_without_annotation", "skipped_file", "no annotation names this image; add its XML")
        for p in images
        if str(p) not in claimed
    ]
