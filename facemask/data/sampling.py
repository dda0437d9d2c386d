"""Repeat-factor sampling for the rare classes (Gupta et al., LVIS, 2019), written into the
training image list.

Each training image is repeated r = max(1, sqrt(t / f_c)) times over the rarest class c it
holds, where f_c is the fraction of training images that contain c and t the threshold:
a class in fewer than t of the images is seen more often, one above it is left alone.
Ultralytics reads a `.txt` of image paths as a split, and a path listed twice is trained on
twice per epoch, so the repeats live in `train.txt` beside data.yaml. Fractional factors are
rounded up or down at random (seeded), so that an image's expected count is its factor.
Only the training split is ever listed this way; val and test stay as they are.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from facemask.core.manifest import data_fingerprint, read_manifest, write_manifest

TRAIN_LIST = "train.txt"


@dataclass
class RepeatPlan:
    threshold: float
    class_frequency: dict[int, float]
    class_factor: dict[int, float]
    image_factor: list[float]
    repeats: list[int] = field(default_factory=list)

    @property
    def listed(self) -> int:
        return sum(self.repeats)


def repeat_factors(image_classes: Sequence[set[int]], threshold: float, seed: int = 0) -> RepeatPlan:
    """Each image's repeat factor and its integer repeat count, from the classes each image holds."""
    if not threshold > 0:
        raise ValueError(f"repeat threshold {threshold}: must be > 0 (LVIS used 0.001; for three classes try 0.1-0.5)")
    n = len(image_classes)
    classes = sorted({c for held in image_classes for c in held})
    frequency = {c: sum(1 for held in image_classes if c in held) / n for c in classes}
    class_factor = {c: max(1.0, math.sqrt(threshold / f)) for c, f in frequency.items()}
    image_factor = [max((class_factor[c] for c in held), default=1.0) for held in image_classes]
    rng = random.Random(seed)
    repeats = [int(f) + (1 if rng.random() < f - int(f) else 0) for f in image_factor]
    return RepeatPlan(threshold, frequency, class_factor, image_factor, repeats)


def label_classes(label_file: Path) -> set[int]:
    """The class ids in one YOLO label file."""
    return {int(line.split()[0]) for line in label_file.read_text().splitlines() if line.strip()}


def write_train_list(out: Path, threshold: float, seed: int, names: Sequence[str], target: Path | None = None) -> dict:
    """Write `train.txt` (every training image, each repeated by its factor) under the YOLO tree
    at `out`, or at `target` with absolute paths; return the manifest's `repeat` section, with
    class names from `names`."""
    images = sorted((out / "images" / "train").iterdir())
    held = [label_classes(out / "labels" / "train" / f"{image.stem}.txt") for image in images]
    plan = repeat_factors(held, threshold, seed)
    prefix = f"{(out / 'images' / 'train').resolve()}/" if target else "./images/train/"
    lines = [f"{prefix}{image.name}\n" for image, r in zip(images, plan.repeats) for _ in range(r)]
    (target or out / TRAIN_LIST).write_text("".join(lines))
    return {
        "threshold": threshold,
        "list": str(target) if target else TRAIN_LIST,
        "images": len(images),
        "listed": plan.listed,
        "class_frequency": {names[c]: round(f, 5) for c, f in plan.class_frequency.items()},
        "class_factor": {names[c]: round(r, 4) for c, r in plan.class_factor.items()},
        "repeated": {image.name: r for image, r in zip(images, plan.repeats) if r > 1},
    }


def data_with_repeats(
    data_yaml: Path, threshold: float, seed: int, folder: Path, names: Sequence[str]
) -> tuple[Path, dict]:
    """A copy of a prepared dataset's data.yaml in `folder` whose train split is a repeated list
    (for a Tune trial or a benchmark variant that samples by repeat factors): (its path, the plan)."""
    import yaml

    doc = yaml.safe_load(Path(data_yaml).read_text())
    root = Path(doc["path"])
    folder.mkdir(parents=True, exist_ok=True)
    plan = write_train_list(root, threshold, seed, names, target=folder / TRAIN_LIST)
    doc["train"] = str((folder / TRAIN_LIST).resolve())
    path = folder / "data.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    # Its own manifest: the prepared data's, with the repeats and a fingerprint that tells them apart.
    manifest = read_manifest(data_yaml)
    base = data_fingerprint(data_yaml)
    manifest.update(
        repeat=plan,
        derived_from=base,
        fingerprint=hashlib.sha256(json.dumps({"base": base, "repeat": [threshold, seed]}).encode()).hexdigest(),
    )
    write_manifest(folder, manifest)
    return path, plan
