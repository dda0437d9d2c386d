"""The one class map of the project. Every other module imports it from here."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = ("with_mask", "without_mask", "mask_weared_incorrect")
CLASS_IDS: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
# The two rare classes of the Kaggle set; copy-paste balances these by default.
MINORITY_CLASSES: tuple[str, ...] = ("without_mask", "mask_weared_incorrect")


def class_id(name: str) -> int:
    """Return the YOLO id of a class name, or raise KeyError naming the valid ones."""
    try:
        return CLASS_IDS[name]
    except KeyError:
        raise KeyError(f"unknown class {name!r}: valid classes are {', '.join(CLASS_NAMES)}") from None


def class_counts(detections: list[dict]) -> dict[str, int]:
    """Detections (dicts with a `label`) per class, every class present."""
    counts = dict.fromkeys(CLASS_NAMES, 0)
    for d in detections:
        counts[d["label"]] += 1
    return counts


def yolo_names() -> dict[int, str]:
    """The `names` mapping of a YOLO data.yaml."""
    return dict(enumerate(CLASS_NAMES))


# A class-map target that drops a label's boxes on purpose (counted as `ignored_class`).
IGNORE = "ignore"


def map_label(label: str | None, class_map: dict[str, str]) -> str | None:
    """The class a source label stands for: the map's entry, else the label itself when it is a
    class name, else None (a label nobody mapped). May return IGNORE."""
    if label is None:
        return None
    if label in class_map:
        return class_map[label]
    return label if label in CLASS_IDS else None
