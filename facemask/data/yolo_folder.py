"""Read an Ultralytics/YOLO dataset folder (CVAT, Roboflow and Label Studio exports among them).

The layout is `data.yaml` (or `classes.txt`, `obj.names`) beside images whose labels sit at
Ultralytics' own place: the last `images/` of the path turned into `labels/`, `.txt` for the
suffix; or, as CVAT's YOLO 1.1 export writes them, beside the image. Split folders
(`images/train`, `train/images`, ...) are read as one pool: `prepare` makes its own stratified
split of the originals. Each function of one image is pure, like the VOC reader's.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import yaml

from facemask.core.errors import ConfigError
from facemask.data.records import (
    IMAGE_EXTENSIONS,
    MAX_ANNOTATION_BYTES,
    ParseResult,
    Problem,
    Record,
    accept_box,
    read_capped,
    read_image_size,
    sha256_bytes,
    skip_image,
)

NAME_FILES = ("classes.txt", "obj.names")


def class_names(root: Path) -> list[str] | None:
    """The class names of a YOLO folder, by id: a YAML with `names` (list or id mapping) at its
    top, else classes.txt / obj.names / any .names file, one name per line; None when there is none."""
    for path in sorted(root.glob("*.y*ml")):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            try:
                ids = {int(k): str(v) for k, v in names.items()}
            except ValueError:
                raise ConfigError(f"{path}: names must map class ids (0, 1, ...) to names; got {names}") from None
            return [ids.get(i, f"class {i}") for i in range(max(ids) + 1)] if ids else []
        if isinstance(names, list):
            return [str(n) for n in names]
    for path in [*(root / n for n in NAME_FILES), *sorted(root.glob("*.names"))]:
        if path.is_file():
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return None


def looks_like_yolo(root: Path) -> bool:
    return class_names(root) is not None or (root / "labels").is_dir()


def label_path(image: Path) -> Path:
    """Where Ultralytics looks for an image's labels (`img2label_paths`), else beside the image."""
    text = str(image)
    marker = f"{os.sep}images{os.sep}"
    if marker in text:
        head, tail = text.rsplit(marker, 1)
        candidate = Path(f"{head}{os.sep}labels{os.sep}{tail}").with_suffix(".txt")
        if candidate.is_file():
            return candidate
    return image.with_suffix(".txt")


def list_items(root: Path) -> tuple[list[str], list[Path], list[tuple[Path, Path]], list[Problem]]:
    """(class names, every image, (image, its label file) pairs, label files with no image).

    Raises ConfigError when the folder names no classes: label files hold only ids.
    """
    names = class_names(root)
    if names is None:
        raise ConfigError(
            f"{root}: a YOLO folder needs its class names; add data.yaml with `names: [...]` "
            f"(or classes.txt, one name per line) beside images/ and labels/"
        )
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    pairs = [(image, label_path(image)) for image in images]
    claimed = {str(label) for _, label in pairs}
    orphans = [
        Problem(str(p), "label_without_image", "skipped_file", "no image has this label file's name; add the image")
        for p in sorted(root.rglob("*.txt"))
        if "labels" in p.relative_to(root).parts and str(p) not in claimed
    ]
    return names, images, pairs, orphans


def parse_line(fields: list[str], classes: int) -> tuple[int, tuple[float, ...]] | str:
    """One label line as (class id, normalised x1, y1, x2, y2), or why it cannot be used. A polygon
    line (segmentation exports) becomes its bounding box."""
    try:
        class_index = int(float(fields[0]))
        values = [float(v) for v in fields[1:]]
    except ValueError:
        return f"line {' '.join(fields)!r} is not numbers"
    if not 0 <= class_index < classes:
        return f"class id {class_index} is not among the {classes} names of the folder's data.yaml"
    if len(values) == 4:
        cx, cy, w, h = values
        coords = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    elif len(values) >= 6 and len(values) % 2 == 0:  # a polygon x1 y1 x2 y2 ...
        xs, ys = values[0::2], values[1::2]
        coords = (min(xs), min(ys), max(xs), max(ys))
    else:
        return f"{len(values)} numbers after the class id; YOLO wants 4 (cx cy w h) or a polygon"
    if any(abs(v) > 1.5 for v in coords):
        return f"coordinates {values[:4]} are not normalised to 0..1 (YOLO format); re-export normalised"
    return class_index, coords


def parse_labels(image: str, label: str, names: list[str], class_map: dict[str, str]) -> ParseResult:
    """One image and its YOLO label file as a Record. Never raises for bad input.

    A missing label file is an image with no face (YOLO's convention for background images),
    kept and reported. Polygon lines (segmentation exports) become their bounding boxes.
    """
    image_path, label_file = Path(image), Path(label)
    result = ParseResult(annotation=label, record=None, image=image)
    text = ""
    if label_file.exists():
        try:
            raw = read_capped(label_file, MAX_ANNOTATION_BYTES)
            text = raw.decode("utf-8", errors="replace")
        except ValueError as exc:
            result.problems.append(Problem(label, "unreadable_annotation", "skipped_file", f"{exc}; fix or remove it"))
            return result
        result.annotation_sha256 = sha256_bytes(raw)
    else:
        result.annotation_sha256 = sha256_bytes(b"")
        reason = f"no label file ({label_file.name}); kept as an image with no face, as YOLO reads it"
        result.problems.append(Problem(image, "no_label_file", "corrected", reason))
    try:
        width, height, image_sha = read_image_size(image_path)
    except ValueError as exc:
        return skip_image(result, image_path, str(exc))

    boxes, labels = [], Counter()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label} object #{number}"
        parsed = parse_line(fields, len(names))
        if isinstance(parsed, str):
            result.problems.append(Problem(where, "bad_box", "dropped_box", parsed))
            continue
        class_index, coords = parsed
        name = names[class_index]
        labels[name] += 1
        pixels = (coords[0] * width, coords[1] * height, coords[2] * width, coords[3] * height)
        box, found = accept_box(name, pixels, (width, height), where, class_map)
        result.problems += found
        if box is not None:
            boxes.append(box)
    result.labels = dict(labels)
    result.record = Record(image, label, width, height, tuple(boxes), image_sha)
    return result
