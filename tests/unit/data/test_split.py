"""Stratified split: proportions, every class in every split, determinism."""

from __future__ import annotations

import pytest

from facemask.core.classes import CLASS_NAMES
from facemask.data.records import Box, Record
from facemask.data.split import class_presence, stratified_split


def records(n: int = 200) -> list[Record]:
    out = []
    for i in range(n):
        labels = ["with_mask"] * (1 + i % 3)
        if i % 4 == 0:
            labels.append("without_mask")
        if i % 25 == 0:  # 8 images hold the rare class
            labels.append("mask_weared_incorrect")
        boxes = tuple(Box(label, 0, 0, 10, 10) for label in labels)
        out.append(
            Record(
                image=f"/src/images/{i:04d}.png", annotation=f"/src/a/{i:04d}.xml", width=100, height=100, boxes=boxes
            )
        )
    return out


def test_proportions_and_every_class_everywhere():
    split = stratified_split(records(), (0.7, 0.2, 0.1), seed=3)
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes == {"train": 140, "val": 40, "test": 20}
    presence = class_presence(split)
    for name in split:
        for cls in CLASS_NAMES:
            assert presence[name][cls] > 0, (name, cls)


def test_no_image_in_two_splits_and_none_lost():
    data = records()
    split = stratified_split(data, seed=1)
    seen = [r.image for part in split.values() for r in part]
    assert sorted(seen) == sorted(r.image for r in data)


def test_deterministic_per_seed():
    a = stratified_split(records(), seed=5)
    b = stratified_split(list(reversed(records())), seed=5)
    c = stratified_split(records(), seed=6)
    assert {k: [r.image for r in v] for k, v in a.items()} == {k: [r.image for r in v] for k, v in b.items()}
    assert {k: [r.image for r in v] for k, v in a.items()} != {k: [r.image for r in v] for k, v in c.items()}


@pytest.mark.parametrize("fractions", [(0.7, 0.2), (0.5, 0.2, 0.1), (0.9, 0.0, 0.1), (-0.1, 0.6, 0.5)])
def test_bad_fractions_are_rejected(fractions):
    with pytest.raises(ValueError, match="split"):
        stratified_split(records(10), fractions)
