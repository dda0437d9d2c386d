"""The sample pool as a labelling task, with the model's boxes as pre-labels.

- `voc`: Pascal VOC (annotations/*.xml, images/*), the training data's own format. CVAT imports
  it as "PASCAL VOC 1.1"; the corrected export (or this folder, corrected by hand) is read back
  by `facemask data prepare --source DIR --format voc` through the same reader and class map.
- `label-studio`: tasks.json with each image's pre-labels as `predictions` (rectangles in
  percent of the image, with the model's score and version) and label_config.xml for the
  three classes. Images are referred to as `<url-prefix><path>`; the default suits Label
  Studio's local file serving with this folder as its document root. Export the corrected
  labels from Label Studio as Pascal VOC or COCO, and prepare them as above.

Only images with their sidecar are exported; a sample without one (a kill between the two
writes cannot leave one, but a hand-deleted file can) is skipped and counted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import ConfigError, InputNotFoundError

FORMATS = ("voc", "label-studio")
LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <RectangleLabels name="label" toName="image">
{labels}  </RectangleLabels>
</View>
"""


def pool_samples(pool: Path) -> tuple[list[tuple[Path, dict]], int]:
    """Every (image, sidecar) of the pool, oldest first, and how many images lack a sidecar."""
    if not pool.is_dir():
        raise InputNotFoundError(f"{pool}: no sample pool; give the folder of the watch's `sampling:` pool")
    found, orphans = [], 0
    for image in sorted(pool.glob("*/*.jpg"), key=lambda p: p.name):
        side = image.with_suffix(".json")
        if not side.is_file():
            orphans += 1
            continue
        found.append((image, json.loads(side.read_text())))
    return found, orphans


def export_pool(pool: Path, to: Path, fmt: str = "voc", url_prefix: str = "/data/local-files/?d=") -> dict:
    """Write the pool to `to` as a labelling task; returns counts and paths."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    samples, orphans = pool_samples(pool)
    images = to / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = []
    for image, meta in samples:
        name = f"{meta['camera']}-{image.name}"
        shutil.copy2(image, images / name)
        names.append(name)
    if fmt == "voc":
        from facemask.data.synth import SynthFace, voc_xml

        annotations = to / "annotations"
        annotations.mkdir(exist_ok=True)
        for name, (_, meta) in zip(names, samples):
            faces = [SynthFace(d["label"], _box(d["box"])) for d in meta["detections"]]
            (annotations / f"{Path(name).stem}.xml").write_text(voc_xml(name, meta["width"], meta["height"], faces))
    else:
        tasks = [_task(f"{url_prefix}images/{name}", meta) for name, (_, meta) in zip(names, samples)]
        (to / "tasks.json").write_text(json.dumps(tasks, indent=1))
        labels = "".join(f'    <Label value="{name}"/>\n' for name in CLASS_NAMES)
        (to / "label_config.xml").write_text(LABEL_CONFIG.format(labels=labels))
    return {"exported": len(samples), "skipped_without_sidecar": orphans, "format": fmt, "to": str(to)}


def _box(box: dict) -> tuple[int, int, int, int]:
    return (round(box["x1"]), round(box["y1"]), round(box["x2"]), round(box["y2"]))


def _task(url: str, meta: dict) -> dict:
    width, height = meta["width"], meta["height"]
    result = [
        {
            "id": f"p{i}",
            "type": "rectanglelabels",
            "from_name": "label",
            "to_name": "image",
            "original_width": width,
            "original_height": height,
            "score": d["confidence"],
            "value": {
                "x": 100 * d["box"]["x1"] / width,
                "y": 100 * d["box"]["y1"] / height,
                "width": 100 * (d["box"]["x2"] - d["box"]["x1"]) / width,
                "height": 100 * (d["box"]["y2"] - d["box"]["y1"]) / height,
                "rotation": 0,
                "rectanglelabels": [d["label"]],
            },
        }
        for i, d in enumerate(meta["detections"])
    ]
    data = {"image": url, "camera": meta["camera"], "reasons": ",".join(meta["reasons"])}
    return {"data": data, "predictions": [{"model_version": str(meta.get("model_version")), "result": result}]}
