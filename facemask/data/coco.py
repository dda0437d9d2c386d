"""Read COCO detection JSON (CVAT, Label Studio and Roboflow exports): one or more
`*.json` files with `images`, `annotations` and `categories`, and the images they name.

The driver reads each JSON once and hands every image, with its own annotations, to
`parse_entry`, a pure function like the VOC reader's. A crowd annotation (`iscrowd: 1`)
marks a group of faces, not one face, and is dropped and counted, as COCO training does;
an annotation with only a segmentation gets the box around it.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from facemask.core.errors import ConfigError
from facemask.data import records
from facemask.data.records import ParseResult, Problem, Record

COCO_KEYS = ("images", "annotations", "categories")


def load(path: Path) -> dict | None:
    """The JSON at `path` when it is COCO detection data, else None; ValueError when unreadable."""
    raw = records.read_capped(path, records.MAX_ANNOTATION_BYTES)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    return data if isinstance(data, dict) and all(k in data for k in COCO_KEYS) else None


def find_files(source: Path) -> list[tuple[Path, dict]]:
    """A COCO source's JSON files, each with its data (read once): the file itself, or those in
    the folder, its annotations/ folder and its split folders (Roboflow's
    train/_annotations.coco.json). A file named directly that is not COCO is a ConfigError."""
    if source.is_file():
        try:
            data = load(source)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}; pass COCO detection JSON") from None
        if data is None:
            raise ConfigError(f"{source}: not COCO detection JSON; it needs images, annotations and categories")
        return [(source, data)]
    places = [source, source / "annotations", *sorted(p for p in source.iterdir() if p.is_dir())]
    found: list[tuple[Path, dict]] = []
    for place in places:
        for path in sorted(place.glob("*.json")) if place.is_dir() else []:
            try:
                data = load(path)
            except ValueError:  # a JSON file of something else, or broken: not one of the source's
                continue
            if data is not None and all(path != seen for seen, _ in found):
                found.append((path, data))
    return found


def resolve_image(file_name: str, json_path: Path) -> Path | None:
    """A COCO `file_name` is relative to the images folder, which exporters put beside the JSON,
    in `images/` beside it, or in `images/` beside its annotations/ folder."""
    base = json_path.parent
    relative = Path(file_name)
    for folder in (base, base / "images", base.parent / "images", base.parent):
        for candidate in (folder / relative, folder / relative.name):
            if candidate.is_file():
                return candidate
    return None


def entries(json_path: Path, data: dict) -> tuple[list[dict], list[Problem]]:
    """One row per image of a COCO file, holding its annotations; problems of the file itself."""
    problems = []
    categories = {c.get("id"): str(c.get("name")) for c in data["categories"] if isinstance(c, dict)}
    by_image: dict = defaultdict(list)
    for ann in data["annotations"]:
        if isinstance(ann, dict):
            by_image[ann.get("image_id")].append(ann)
    rows = []
    for image in data["images"]:
        if not isinstance(image, dict) or "file_name" not in image:
            problems.append(Problem(str(json_path), "bad_image_entry", "skipped_file", f"{image!r} has no file_name"))
            continue
        found = resolve_image(str(image["file_name"]), json_path)
        anns = by_image.get(image.get("id"), [])
        entry = {"image": image, "annotations": anns}
        rows.append(
            {
                "annotation": f"{json_path}#{image.get('id')}",
                "image": str(found) if found else "",
                "entry": json.dumps(entry, sort_keys=True),
                "categories": json.dumps({str(k): v for k, v in categories.items()}),
            }
        )
    return rows, problems


def images_beside(json_paths: list[Path], claimed: list[str]) -> list[Path]:
    """Every image in the folders that the JSON files' images live in (to find the unlisted ones)."""
    folders = {Path(p).parent for p in claimed if p} or {p.parent for p in json_paths}
    return sorted(p for f in folders for p in f.iterdir() if p.suffix.lower() in records.IMAGE_EXTENSIONS)


def rle_box(segmentation: dict) -> tuple[float, float, float, float] | None:
    """The box around an uncompressed RLE mask (column-major runs, zeros first); None when compressed."""
    counts, size = segmentation.get("counts"), segmentation.get("size")
    if not isinstance(counts, list) or not size:
        return None
    height = int(size[0])
    x1 = y1 = float("inf")
    x2 = y2 = float("-inf")
    position = 0
    for index, run in enumerate(counts):
        if index % 2 == 1 and run > 0:
            first, last = position, position + run - 1
            c0, c1 = first // height, last // height
            rows = (first % height, last % height) if c0 == c1 else (0, height - 1)
            x1, x2 = min(x1, c0), max(x2, c1 + 1)
            y1, y2 = min(y1, rows[0]), max(y2, rows[1] + 1)
        position += run
    return None if x1 == float("inf") else (x1, y1, x2, y2)


def object_box(ann: dict) -> tuple[tuple | None, str | None]:
    """(x1, y1, x2, y2) of one annotation, and a note when it came from the segmentation."""
    bbox = ann.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox) and bbox[2] > 0:
        x, y, w, h = bbox
        return (x, y, x + w, y + h), None
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list) and segmentation:
        points = [v for polygon in segmentation if isinstance(polygon, list) for v in polygon]
        xs, ys = points[0::2], points[1::2]
        if xs and ys:
            return (min(xs), min(ys), max(xs), max(ys)), "no bbox; used the box around its polygon"
    if isinstance(segmentation, dict):
        box = rle_box(segmentation)
        if box is not None:
            return box, "no bbox; used the box around its RLE mask"
        return None, "no bbox and a compressed RLE mask; export boxes, or masks as polygons"
    return None, "no bbox and no segmentation"


def parse_entry(row: dict, class_map: dict[str, str]) -> ParseResult:
    """One image of a COCO file with its annotations, as a Record. Never raises for bad input."""
    entry = json.loads(row["entry"])
    categories = json.loads(row["categories"])
    result = ParseResult(annotation=row["annotation"], record=None, image=row["image"] or None)
    result.annotation_sha256 = records.sha256_bytes(row["entry"].encode())
    image = entry["image"]
    if not row["image"]:
        reason = f"no image {image['file_name']!r} beside the JSON or in an images/ folder next to it"
        result.problems.append(Problem(row["annotation"], "annotation_without_image", "skipped_file", reason))
        return result
    try:
        width, height, image_sha = records.read_image_size(Path(row["image"]))
    except ValueError as exc:
        return records.skip_image(result, Path(row["image"]), str(exc))
    result.problems += records.check_declared_size(
        (image.get("width"), image.get("height")), row["annotation"], width, height
    )
    boxes, labels = [], Counter()
    for ann in entry["annotations"]:
        where = f"{row['annotation']} object #{ann.get('id')}"
        label = categories.get(str(ann.get("category_id")))
        if label is None:
            reason = f"category_id {ann.get('category_id')!r} is not among the file's categories"
            result.problems.append(Problem(where, "bad_box", "dropped_box", reason))
            continue
        labels[label] += 1
        if ann.get("iscrowd"):
            reason = "iscrowd=1 marks a group of faces, not one face; dropped, as COCO training does"
            result.problems.append(Problem(where, "crowd_box", "dropped_box", reason))
            continue
        coords, note = object_box(ann)
        if coords is None:
            result.problems.append(Problem(where, "bad_box", "dropped_box", note or "no box"))
            continue
        if note:
            result.problems.append(Problem(where, "box_from_segmentation", "corrected", note))
        box, found = records.accept_box(label, coords, (width, height), where, class_map)
        result.problems += found
        if box is not None:
            boxes.append(box)
    result.labels = dict(labels)
    result.record = Record(row["image"], row["annotation"], width, height, tuple(boxes), image_sha)
    return result
