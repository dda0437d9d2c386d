"""A labelled source in any of the formats labelling tools export: which one it is, its items
for the parse stage, and the stop when a label means no class.

Pascal VOC (`annotations/*.xml` + `images/`), an Ultralytics/YOLO folder (`data.yaml` +
images and labels) and COCO JSON are read by `voc`, `yolo_folder` and `coco` into the same
`Record`s; from there on the format is forgotten. Every label goes through the class map
(`--class-map mask=with_mask,...`); one that maps to nothing stops the run, listing every
label found, unless the user said to drop it (`--drop-unknown`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from facemask.core.classes import CLASS_NAMES, IGNORE, map_label
from facemask.core.errors import ConfigError, InputNotFoundError
from facemask.core.settings import SOURCE_FORMATS
from facemask.data import coco, voc, yolo_folder
from facemask.data.records import ParseResult, Problem

LAYOUTS = (
    "Pascal VOC (annotations/*.xml + images/), a YOLO folder (data.yaml + images/ + labels/) "
    "or COCO JSON (a .json file, or a folder holding one, with its images)"
)


@dataclass
class Listing:
    """What a source holds, before any file is parsed."""

    format: str
    root: Path  # paths in reports and the manifest are relative to it
    rows: list[dict]  # one per item, for `parse_row` (in one process or a Ray Data map)
    images: list[Path]  # every image file, to find unlisted ones and fingerprint the input
    problems: list[Problem] = field(default_factory=list)  # met while listing

    @property
    def unit(self) -> str:
        return {"voc": "annotations", "yolo": "images", "coco": "image entries"}[self.format]


def detect_format(source: Path) -> str:
    """The format of `source`; InputNotFoundError naming the three layouts when it is none of them."""
    return _detect(source)[0]


def _detect(source: Path) -> tuple[str, list | None]:
    """(format, the COCO files found with their data when detecting read them: None otherwise)."""
    if source.is_file() and source.suffix.lower() == ".json":
        return "coco", None
    if not source.is_dir():
        raise InputNotFoundError(f"{source}: no such folder or .json file; pass {LAYOUTS}")
    if (source / "annotations").is_dir() and any((source / "annotations").glob("*.xml")):
        return "voc", None
    if yolo_folder.looks_like_yolo(source):
        return "yolo", None
    if found := coco.find_files(source):
        return "coco", found
    names = sorted(p.name for p in source.iterdir())[:10]
    raise InputNotFoundError(f"{source}: found {names}, which is none of {LAYOUTS}; or name it with --format")


def list_source(source: Path, fmt: str = "auto", class_map: dict[str, str] | None = None) -> Listing:
    """The items of `source` in format `fmt` ("auto": detected), each row carrying the class map."""
    source = Path(source)
    fmt, coco_files = _detect(source) if fmt == "auto" else (fmt, None)
    mapping = json.dumps(class_map or {}, sort_keys=True)
    if fmt == "voc":
        annotations, images, images_dir = voc.find_source_files(source)
        rows = [{"annotation": str(a), "images_dir": str(images_dir)} for a in annotations]
        listing = Listing("voc", source, rows, images)
    elif fmt == "yolo":
        if not source.is_dir():
            raise InputNotFoundError(f"--format yolo: {source} is not a folder; pass the folder holding data.yaml")
        names, images, pairs, orphans = yolo_folder.list_items(source)
        rows = [{"image": str(i), "label": str(lbl), "names": json.dumps(names)} for i, lbl in pairs]
        listing = Listing("yolo", source, rows, images, orphans)
    elif fmt == "coco":
        listing = _list_coco(source, coco_files)
    else:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(SOURCE_FORMATS)}")
    for row in listing.rows:
        row["format"], row["class_map"] = listing.format, mapping
    return listing


def _list_coco(source: Path, found: list | None = None) -> Listing:
    """`found`: the files and data detection already read, so no JSON is parsed twice."""
    if found is None:
        found = coco.find_files(source) if source.exists() else []
    if not found:
        raise InputNotFoundError(f"{source}: no COCO JSON (a file with images, annotations and categories)")
    files = [path for path, _ in found]
    rows, problems = [], []
    for path, data in found:
        found_rows, bad = coco.entries(path, data)
        rows += found_rows
        problems += bad
    images = coco.images_beside(files, [r["image"] for r in rows])
    # Reports are relative to the folder that holds both the JSON files and the images.
    root = Path(os.path.commonpath([str(p.parent) for p in files] + [str(p.parent) for p in images]))
    return Listing("coco", root, rows, images, problems)


def parse_row(row: dict) -> ParseResult:
    """Parse one item of any format. Never raises for bad input."""
    class_map = json.loads(row["class_map"])
    if row["format"] == "voc":
        return voc.parse_annotation(row["annotation"], row["images_dir"], class_map)
    if row["format"] == "yolo":
        return yolo_folder.parse_labels(row["image"], row["label"], json.loads(row["names"]), class_map)
    return coco.parse_entry(row, class_map)


def check_labels(results: list[ParseResult], class_map: dict[str, str], drop_unknown: bool, where: Path) -> dict:
    """Every label found with its count and its class; ConfigError in one line when some label
    maps to no class and the user did not say to drop it."""
    found: Counter = Counter()
    for result in results:
        found.update(result.labels)
    mapping = {label: map_label(label, class_map) for label in sorted(found)}
    unknown = [label for label, name in mapping.items() if name is None]
    if unknown and not drop_unknown:
        listed = ", ".join(f"{label} ({found[label]})" for label in sorted(found, key=lambda k: (-found[k], k)))
        guess = suggest_class_map(unknown)
        hint = ",".join(f"{k}={v}" for k, v in guess.items()) or f"{unknown[0]}={CLASS_NAMES[0]}"
        raise ConfigError(
            f"{where}: {len(unknown)} label(s) with no class: {', '.join(unknown)}. Labels found: {listed}. "
            f"Map them with --class-map {hint} (classes: {', '.join(CLASS_NAMES)}; ignore drops a label), "
            "or pass --drop-unknown to drop their boxes"
        )
    return {label: {"objects": found[label], "class": mapping[label]} for label in sorted(found)}


def parse_class_map(text: str, where: str = "--class-map") -> dict[str, str]:
    """`mask=with_mask,no_mask=without_mask` or a YAML file of the same pairs, as a dict.

    Raises ConfigError naming the pair and the valid targets when one cannot work.
    """
    if not text:
        return {}
    path = Path(text)
    if "=" not in text and path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise ConfigError(f"{where} {text}: no such file; pass LABEL=CLASS pairs or a YAML file of them")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{where} {text}: expected a mapping of LABEL: CLASS, got {type(loaded).__name__}")
        pairs = [(str(k), str(v)) for k, v in loaded.items()]
    else:
        pairs = []
        for item in (part.strip() for part in text.split(",")):
            label, sep, target = item.partition("=")
            if not sep or not label.strip() or not target.strip():
                raise ConfigError(f"{where} {item!r}: expected LABEL=CLASS, such as mask=with_mask")
            pairs.append((label.strip(), target.strip()))
    valid = (*CLASS_NAMES, IGNORE)
    for label, target in pairs:
        if target not in valid:
            raise ConfigError(f"{where} {label}={target}: {target!r} is not a class; map to one of {', '.join(valid)}")
    return dict(pairs)


def suggest_class_map(labels: list[str]) -> dict[str, str]:
    """A guess at what each unmapped label means, from the words labelling tools use
    (`mask`, `no_mask`, `mask_incorrect`, `without mask`, ...), for the error message only:
    nothing is mapped without the user saying so."""
    out = {}
    for label in labels:
        words = label.lower().replace("-", "_").replace(" ", "_")
        if any(w in words for w in ("incorrect", "improper", "wrong", "weared", "partial", "chin", "nose")):
            out[label] = "mask_weared_incorrect"
        elif words.startswith(("no_", "no", "without", "unmask", "bare")) or "nomask" in words:
            out[label] = "without_mask"
        elif "mask" in words:
            out[label] = "with_mask"
    return out
