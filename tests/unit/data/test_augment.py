"""Copy-paste: train-only crops, tight boxes from the alpha, no overlaps, every blend mode."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from facemask.data.augment import AugmentConfig, paste_targets, plan_synthetic, render_synthetic, transform_crop
from facemask.data.records import Box, Record


def train_records(tmp_path, n=6):
    out = []
    for i in range(n):
        img = Image.new("RGB", (320, 240), (30 + i * 20, 80, 120))
        # a bright "face" so the pasted crop is visible in the result
        img.paste((250, 220, 180), (20, 20, 60, 70))
        img.paste((200, 40, 40), (100, 30, 140, 80))
        path = tmp_path / f"train{i}.png"
        img.save(path)
        boxes = (
            Box("with_mask", 20, 20, 60, 70),
            Box("mask_weared_incorrect" if i % 2 else "without_mask", 100, 30, 140, 80),
        )
        out.append(Record(image=str(path), annotation=str(path) + ".xml", width=320, height=240, boxes=boxes))
    return out


def test_balance_targets():
    counts = {"with_mask": 100, "without_mask": 20, "mask_weared_incorrect": 5}
    cfg = AugmentConfig(balance_ratio=0.5)
    assert paste_targets(counts, cfg) == {"without_mask": 30, "mask_weared_incorrect": 45}
    explicit = AugmentConfig(pastes_per_class=(("without_mask", 7),))
    assert paste_targets(counts, explicit) == {"without_mask": 7}
    assert paste_targets(counts, AugmentConfig(balance_ratio=0)) == {}


def test_plan_uses_only_the_records_it_is_given(tmp_path):
    train = train_records(tmp_path)
    plan = plan_synthetic(
        train, AugmentConfig(pastes_per_class=(("mask_weared_incorrect", 9), ("without_mask", 5))), seed=1
    )
    allowed = {r.image for r in train}
    pastes = [p for job in plan.jobs for p in job["pastes"]]
    assert len(pastes) == 14
    assert {p["image"] for p in pastes} <= allowed
    assert plan.planned_pastes == {"mask_weared_incorrect": 9, "without_mask": 5}
    again = plan_synthetic(
        train, AugmentConfig(pastes_per_class=(("mask_weared_incorrect", 9), ("without_mask", 5))), seed=1
    )
    assert again.jobs == plan.jobs


def test_transformed_crop_alpha_is_tight():
    crop = Image.new("RGB", (40, 50), (200, 100, 50))
    sprite = transform_crop(crop, seed=3)
    alpha = sprite.getchannel("A").point(lambda a: 255 if a >= 128 else 0)
    assert alpha.getbbox() == (0, 0, *sprite.size)
    # rotation/shear/scale change the extent, so the box is not the pre-transform one
    assert 20 < sprite.size[0] < 90 and 25 < sprite.size[1] < 100


@pytest.mark.parametrize("blend", ["overlay", "feather", "poisson"])
def test_render_places_new_boxes_without_overlap(tmp_path, blend):
    train = train_records(tmp_path)
    plan = plan_synthetic(
        train, AugmentConfig(pastes_per_class=(("mask_weared_incorrect", 3),), blend=blend, pastes_per_image=3), seed=2
    )
    job = plan.jobs[0]
    out = render_synthetic(job)
    assert out == render_synthetic(job)  # pure: same job, same bytes
    image = Image.open(io.BytesIO(out["jpeg"]))
    assert image.size == (out["width"], out["height"])
    assert len(out["pasted"]) + out["unplaced"] == 3
    assert len(out["pasted"]) >= 1
    boxes = out["boxes"]
    assert len(boxes) == out["background_boxes"] + len(out["pasted"])
    for i, a in enumerate(boxes):
        assert 0 <= a.x1 < a.x2 <= out["width"] and 0 <= a.y1 < a.y2 <= out["height"]
        for b in boxes[i + 1 :]:
            assert not (a.x1 < b.x2 and b.x1 < a.x2 and a.y1 < b.y2 and b.y1 < a.y2)


def test_bad_config_names_the_fix():
    with pytest.raises(ValueError, match="valid: with_mask"):
        AugmentConfig(classes=("beard",)).validate()
    with pytest.raises(ValueError, match="overlay, feather, poisson"):
        AugmentConfig(blend="magic").validate()
