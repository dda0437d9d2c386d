"""YOLO conversion: label files, data.yaml and the manifest.

Per-image writers are pure functions of their row (so both engines write the same
bytes); the dataset-level files are written once by the driver.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import yaml

from facemask.core.classes import class_id, yolo_names
from facemask.data.records import Box, Record


def yolo_lines(boxes: tuple[Box, ...] | list[Box], width: int, height: int) -> str:
    """YOLO label text: `class cx cy w h`, normalised, six decimals, one object per line."""
    lines = []
    for b in boxes:
        cx = (b.x1 + b.x2) / 2 / width
        cy = (b.y1 + b.y2) / 2 / height
        w = (b.x2 - b.x1) / width
        h = (b.y2 - b.y1) / height
        lines.append(f"{class_id(b.label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return "".join(line + "\n" for line in lines)


def write_original(record: Record, split: str, out: Path) -> dict:
    """Copy an original image unchanged into the YOLO tree and write its label file."""
    source = Path(record.image)
    image_dst = out / "images" / split / source.name
    label_dst = out / "labels" / split / f"{source.stem}.txt"
    shutil.copyfile(source, image_dst)
    label_dst.write_text(yolo_lines(record.boxes, record.width, record.height))
    return {"split": split, "image": str(image_dst.relative_to(out)), "sha256": record.image_sha256}


def write_synthetic(rendered: dict, out: Path) -> dict:
    """Write one rendered synthetic image (always train) and its label file."""
    name = Path(rendered["name"])
    image_dst = out / "images" / "train" / name.name
    image_dst.write_bytes(rendered["jpeg"])
    (out / "labels" / "train" / f"{name.stem}.txt").write_text(
        yolo_lines(rendered["boxes"], rendered["width"], rendered["height"])
    )
    return {
        "split": "train",
        "image": str(image_dst.relative_to(out)),
        "sha256": hashlib.sha256(rendered["jpeg"]).hexdigest(),
    }


def make_tree(out: Path, splits: tuple[str, ...]) -> None:
    """Create a fresh YOLO tree; stale files from an earlier run would corrupt counts."""
    for kind in ("images", "labels"):
        target = out / kind
        if target.exists():
            shutil.rmtree(target)
        for split in splits:
            (target / split).mkdir(parents=True)


def write_data_yaml(out: Path, splits: tuple[str, ...], lists: dict[str, str] | None = None) -> Path:
    """Write data.yaml with an absolute `path`, so it works from any working directory.

    `lists` names an image-list file for a split in place of its folder (train.txt, with repeats).
    """
    data = {
        "path": str(out.resolve()),
        **{s: (lists or {}).get(s, f"images/{s}") for s in splits},
        "names": yolo_names(),
    }
    path = out / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tree_sha256(out: Path, entries: list[dict]) -> str:
    """One hash over every image and label written, independent of the output folder."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e["image"]):
        label = Path(entry["image"].replace("images/", "labels/", 1)).with_suffix(".txt")
        digest.update(f"{entry['image']}\0{entry['sha256']}\0".encode())
        digest.update(hashlib.sha256((out / label).read_bytes()).digest())
    return digest.hexdigest()
