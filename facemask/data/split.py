"""Stratified train/val/test split of original images.

Only originals are split; synthetic images are made later from the train split alone,
which is what keeps val and test free of pasted content.
"""

from __future__ import annotations

import random
from collections import Counter

from facemask.core.classes import CLASS_NAMES
from facemask.data.records import Record
from facemask.core.settings import validate_fractions

SPLITS: tuple[str, ...] = ("train", "val", "test")


def stratum_of(record: Record, rarity: dict[str, int]) -> str:
    """An image's stratum: its rarest class present (by image count), or "background"."""
    present = record.class_names()
    if not present:
        return "background"
    return min(present, key=lambda name: (rarity.get(name, 0), name))


def stratified_split(
    records: list[Record], fractions: tuple[float, float, float] = (0.7, 0.2, 0.1), seed: int = 0
) -> dict[str, list[Record]]:
    """Split records so every split holds every class where the counts allow it.

    Each image is put in the stratum of its rarest class, so the few images holding the
    minority class are spread across splits first. Each item goes to the split furthest
    below its share, weighing the stratum's gap fully and the whole split's gap by half:
    the first keeps classes spread, the second keeps split sizes on target.
    """
    fractions = validate_fractions(fractions)
    rarity = Counter(name for r in records for name in r.class_names())
    strata: dict[str, list[Record]] = {}
    for record in sorted(records, key=lambda r: r.image):
        strata.setdefault(stratum_of(record, rarity), []).append(record)

    rng = random.Random(seed)
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    total = 0
    # Rarest strata first: they are the ones that need the careful spread.
    order = sorted(strata, key=lambda k: (rarity.get(k, 1 << 30), k))
    for key in order:
        items = strata[key]
        rng.shuffle(items)
        local = Counter()
        for k, record in enumerate(items):

            def deficit(i: int) -> tuple[float, int]:
                name = SPLITS[i]
                local_gap = fractions[i] * (k + 1) - local[name]
                global_gap = fractions[i] * (total + 1) - len(out[name])
                return (local_gap + 0.5 * global_gap, -i)

            choice = SPLITS[max(range(3), key=deficit)]
            local[choice] += 1
            out[choice].append(record)
            total += 1
    for name in SPLITS:
        out[name].sort(key=lambda r: r.image)
    return out


def class_presence(split: dict[str, list[Record]]) -> dict[str, dict[str, int]]:
    """Objects per class in each split, for reports and tests."""
    return {
        name: {c: sum(1 for r in records for b in r.boxes if b.label == c) for c in CLASS_NAMES}
        for name, records in split.items()
    }
