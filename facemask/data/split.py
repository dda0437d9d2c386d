"""Stratified train/val/test split of original images, or one that keeps a previous version's.

Only originals are split; synthetic images are made later from the train split alone,
which is what keeps val and test free of pasted content.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import ConfigError, InputNotFoundError
from facemask.core.settings import validate_fractions
from facemask.data.records import Record

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


def split_keeping(
    records: list[Record],
    previous: dict[str, list[str]],
    relative: Callable[[Record], str],
    fractions: tuple[float, float, float],
    seed: int,
    where: str,
) -> tuple[dict[str, list[Record]], dict[str, Any]]:
    """A split that keeps a previous dataset version's: each image listed in `previous`
    (splits.json: split -> source-relative paths) stays in its split, and only new images are
    split, into train and val by the stratified splitter. The test split neither gains nor
    loses an image, so two versions' models are scored on the same photos; one that would lose
    a test image is refused, naming it. Returns the split and what was kept and added."""
    where_listed = {path: name for name in SPLITS for path in previous.get(name, [])}
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    new = []
    for record in records:
        name = where_listed.get(relative(record))
        (out[name] if name else new).append(record)
    present = {relative(r) for r in records}
    lost = sorted(set(previous.get("test", [])) - present)
    if lost:
        raise ConfigError(
            f"{where}: the test split would lose {len(lost)} images ({', '.join(lost[:3])}"
            f"{', ...' if len(lost) > 3 else ''}) that --source no longer has; put them back, or prepare "
            "without --keep-splits to start a new test split (its scores then compare with no earlier version's)"
        )
    train, val = fractions[0], fractions[1]
    added = stratified_split(new, (train / (train + val), val / (train + val), 0.0), seed) if new else out
    info = {
        "kept": {s: len(out[s]) for s in SPLITS},
        "added": {s: len(added[s]) if new else 0 for s in SPLITS},
        "gone": {s: len(set(previous.get(s, [])) - present) for s in SPLITS},
    }
    if new:
        for s in SPLITS:
            out[s] = sorted(out[s] + added[s], key=lambda r: r.image)
    return out, info


def split_for(records: list[Record], cfg, source: Path) -> tuple[dict[str, list[Record]], dict[str, Any] | None]:
    """The split `cfg` (a PrepareConfig) asks for: stratified, or keeping `cfg.keep_splits`'s;
    with the latter, what was kept (the manifest's `kept_splits`), else None."""
    if cfg.keep_splits is None:
        return stratified_split(records, cfg.split, cfg.seed), None
    previous, kept = read_kept_splits(cfg.keep_splits)
    split, counts = split_keeping(
        records,
        previous,
        lambda r: str(Path(r.image).relative_to(source)),
        cfg.split,
        cfg.seed,
        f"--keep-splits {cfg.keep_splits}",
    )
    return split, {**kept, **counts}


def read_kept_splits(path: Path) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """A previous version's splits.json (or the prepared folder holding it): the splits, and
    where they came from with their hash (part of the new version's fingerprint)."""
    path = Path(path)
    file = path / "splits.json" if path.is_dir() else path
    if not file.is_file():
        raise InputNotFoundError(
            f"--keep-splits {path}: no splits.json there; give the folder of a dataset made by "
            "`facemask data prepare` (it writes splits.json), or that file"
        )
    data = file.read_bytes()
    try:
        previous = json.loads(data)
        ok = isinstance(previous, dict) and all(isinstance(previous.get(s, []), list) for s in SPLITS)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"--keep-splits {file}: not a splits.json (a mapping of train, val, test to lists of paths)")
    return previous, {"from": str(file), "sha256": hashlib.sha256(data).hexdigest()}
