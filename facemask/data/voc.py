"""Read and validate a Pascal VOC dataset (the Kaggle "Face Mask Detection" layout).

Every function here is pure and per-file, so the pipeline can run it in one process or
as a Ray Data `map`. Nothing valid is lost and nothing bad crashes the run: a bad file
becomes a `Problem` with its path and reason, and the pipeline counts and reports it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from facemask.core.errors import InputNotFoundError
from facemask.data.records import (
    IMAGE_EXTENSIONS,
    MAX_ANNOTATION_BYTES,
    Box,
    ParseResult,
    Problem,
    Record,
    accept_box,
    check_declared_size,
    read_capped,
    read_image_size,
    sha256_bytes,
    skip_image,
)


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


def parse_objects(
    root, xml_path: Path, width: int, height: int, class_map: dict[str, str] | None = None
) -> tuple[list[Box], list[Problem], Counter]:
    """Every usable <object> as a Box clipped to the image, each dropped or clipped one as a
    Problem, and every <name> counted."""
    boxes: list[Box] = []
    problems: list[Problem] = []
    labels: Counter = Counter()
    for index, obj in enumerate(root.iter("object")):
        label = _text(obj, "name")
        labels[str(label)] += 1
        bnd = obj.find("bndbox")
        coords = tuple(_number(bnd, tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
        where = f"{xml_path} object #{index}"
        box, found = accept_box(label, coords, (width, height), where, class_map or {}, _text(obj, "difficult") == "1")
        problems += found
        if box is not None:
            boxes.append(box)
    return boxes, problems, labels


def parse_annotation(
    xml_path: Path | str, images_dir: Path | str, class_map: dict[str, str] | None = None
) -> ParseResult:
    """Parse one VOC XML file against its real image, its labels read through `class_map`.
    Never raises for bad input."""
    xml_path, images_dir = Path(xml_path), Path(images_dir)
    result = ParseResult(annotation=str(xml_path), record=None)

    def skip(kind: str, reason: str) -> ParseResult:
        result.problems.append(Problem(str(xml_path), kind, "skipped_file", reason))
        return result

    try:
        raw = read_capped(xml_path, MAX_ANNOTATION_BYTES)
    except ValueError as exc:
        return skip("unreadable_annotation", f"{exc}; fix or remove the file")
    result.annotation_sha256 = sha256_bytes(raw)

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
        return skip_image(result, image_path, str(exc))

    size = root.find("size")
    declared = (_number(size, "width"), _number(size, "height"))
    result.problems += check_declared_size(declared, str(xml_path), width, height)
    boxes, problems, labels = parse_objects(root, xml_path, width, height, class_map)
    result.problems += problems
    result.labels = dict(labels)

    result.record = Record(
        image=str(image_path),
        annotation=str(xml_path),
        width=width,
        height=height,
        boxes=tuple(boxes),
        image_sha256=image_sha,
    )
    return result
