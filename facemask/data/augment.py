"""Synthetic copy-paste augmentation of the train split, from train crops only.

The notebook this project replaces pasted objects before splitting, so val and test held
crops of training faces. Here the plan is drawn from train records alone and every
synthetic image is a new file; `plan_synthetic` is the only place crops are chosen,
which is what the leak test checks.

Planning is sequential and cheap (driver side); rendering is one pure function per
synthetic image (`render_synthetic`), seeded per image, so the Ray and local engines
produce byte-identical files.
"""

from __future__ import annotations

import io
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from facemask.core.classes import CLASS_NAMES
from facemask.core.settings import AugmentConfig
from facemask.data.records import Box, Record

JPEG_QUALITY = 95


@dataclass
class SyntheticPlan:
    """The jobs to render plus what they are meant to achieve, for the manifest."""

    jobs: list[dict] = field(default_factory=list)
    train_counts: dict[str, int] = field(default_factory=dict)
    target_counts: dict[str, int] = field(default_factory=dict)
    planned_pastes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def paste_targets(train_counts: Counter, cfg: AugmentConfig) -> dict[str, int]:
    """Objects to paste per class, from explicit counts or the balance ratio."""
    if cfg.pastes_per_class:
        return {c: int(n) for c, n in cfg.pastes_per_class}
    if not cfg.balance_ratio:
        return {}
    majority = max((train_counts.get(c, 0) for c in CLASS_NAMES), default=0)
    goal = math.ceil(cfg.balance_ratio * majority)
    return {c: max(0, goal - train_counts.get(c, 0)) for c in cfg.classes}


def plan_synthetic(train: list[Record], cfg: AugmentConfig, seed: int) -> SyntheticPlan:
    """Choose, deterministically, which train crops go onto which train backgrounds."""
    cfg.validate()
    rng = random.Random(seed)
    counts = Counter(b.label for r in train for b in r.boxes)
    plan = SyntheticPlan(train_counts={c: counts.get(c, 0) for c in CLASS_NAMES})
    wanted = paste_targets(counts, cfg)
    plan.target_counts = {c: counts.get(c, 0) + n for c, n in wanted.items()}

    pastes: list[dict] = []
    for name, n in sorted(wanted.items()):
        pool = [
            (r, b)
            for r in train
            for b in r.boxes
            if b.label == name and min(b.x2 - b.x1, b.y2 - b.y1) >= cfg.min_crop_px
        ]
        if n and not pool:
            plan.notes.append(f"no train crop of {name} is at least {cfg.min_crop_px}px; pasted none")
            continue
        chosen: list[tuple[Record, Box]] = []
        while len(chosen) < n:
            batch = pool[:]
            rng.shuffle(batch)
            chosen.extend(batch[: n - len(chosen)])
        pastes.extend({"label": b.label, "image": r.image, "box": [b.x1, b.y1, b.x2, b.y2]} for r, b in chosen)
        plan.planned_pastes[name] = len(chosen)
    rng.shuffle(pastes)

    backgrounds = sorted(train, key=lambda r: r.image)
    for index in range(0, len(pastes), cfg.pastes_per_image):
        background = rng.choice(backgrounds)
        number = index // cfg.pastes_per_image
        plan.jobs.append(
            {
                "index": number,
                "name": f"synthetic_{number:05d}_{Path(background.image).stem}.jpg",
                "background": background.to_json(),
                "pastes": pastes[index : index + cfg.pastes_per_image],
                "seed": rng.getrandbits(32),
                "blend": cfg.blend,
                "max_attempts": cfg.max_attempts,
            }
        )
    return plan


def _jitter_colour(img: Image.Image, rng: random.Random) -> Image.Image:
    """Brightness, contrast and saturation by up to 20%, hue by up to 5%, in a random order."""
    steps = [
        lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(0.8, 1.2)),
        lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(0.8, 1.2)),
        lambda im: ImageEnhance.Color(im).enhance(rng.uniform(0.8, 1.2)),
        lambda im: _shift_hue(im, rng.uniform(-0.05, 0.05)),
    ]
    rng.shuffle(steps)
    for step in steps:
        img = step(img)
    return img


def _shift_hue(img: Image.Image, shift: float) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    h = Image.fromarray((np.asarray(h, dtype=np.uint8) + np.uint8(round(shift * 255) % 256)).astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def _inverse_affine(size: tuple[int, int], translate: tuple[float, float], scale: float, shear: float) -> list[float]:
    """PIL's AFFINE data (output pixel -> input pixel) for a shear and scale about the centre
    followed by a translation; torchvision's affine matrix at angle 0 (rotation is done first)."""
    cx, cy = size[0] * 0.5, size[1] * 0.5
    a, b, c, d = 1.0, -math.tan(math.radians(shear)), 0.0, 1.0
    m = [v / scale for v in (d, -b, 0.0, -c, a, 0.0)]
    tx, ty = translate
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
    return m


def transform_crop(crop: Image.Image, seed: int) -> Image.Image:
    """Jitter colour, rotate by up to 15 degrees, flip, then shift, scale and shear a crop;
    return an RGBA crop whose alpha marks the object.

    The crop is padded first so rotation, shear and translation never cut it off;
    colour jitter runs on RGB because brightness on RGBA would also scale the alpha.
    Plain Pillow with its own seeded generator: the same crop and seed give the same bytes
    on every engine and worker, and no worker pays for importing torch.
    """
    rng = random.Random(seed)
    crop = _jitter_colour(crop.convert("RGB"), rng)
    w, h = crop.size
    pad = max(w, h) // 2 + 2
    canvas = Image.new("RGBA", (w + 2 * pad, h + 2 * pad), (0, 0, 0, 0))
    canvas.paste(crop.convert("RGBA"), (pad, pad))
    clear = (0, 0, 0, 0)
    canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR, fillcolor=clear)
    if rng.random() < 0.5:
        canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    size = canvas.size
    translate = (round(rng.uniform(-0.1, 0.1) * size[0]), round(rng.uniform(-0.1, 0.1) * size[1]))
    matrix = _inverse_affine(size, translate, rng.uniform(0.8, 1.2), rng.uniform(-10, 10))
    canvas = canvas.transform(size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR, fillcolor=clear)
    bbox = canvas.getchannel("A").point(lambda a: 255 if a >= 128 else 0).getbbox()
    return canvas.crop(bbox) if bbox else canvas.crop((0, 0, 0, 0))


def _overlaps(box: tuple[float, float, float, float], others: list[tuple[float, float, float, float]]) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < o[2] and o[0] < x2 and y1 < o[3] and o[1] < y2 for o in others)


def _blend(background: Image.Image, sprite: Image.Image, xy: tuple[int, int], mode: str) -> bool:
    """Blend `sprite` onto `background` in place; return False if Poisson had to fall back."""
    alpha = sprite.getchannel("A")
    rgb = sprite.convert("RGB")
    if mode == "overlay":
        background.paste(rgb, xy, alpha.point(lambda a: 255 if a >= 128 else 0))
        return True
    if mode == "poisson":
        import cv2

        cv2.setNumThreads(1)
        mask = np.array(alpha.point(lambda a: 255 if a >= 128 else 0))
        w, h = sprite.size
        dst = np.array(background)
        center = (xy[0] + w // 2, xy[1] + h // 2)
        try:
            out = cv2.seamlessClone(np.array(rgb), dst, mask, center, cv2.NORMAL_CLONE)
        except cv2.error:
            _blend(background, sprite, xy, "feather")
            return False
        background.paste(Image.fromarray(out))
        return True
    radius = max(1.0, min(sprite.size) * 0.06)
    soft = alpha.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.GaussianBlur(radius))
    background.paste(rgb, xy, soft)
    return True


def free_spot(
    rng: random.Random, size: tuple[int, int], canvas: tuple[int, int], taken: list, attempts: int
) -> tuple[int, int] | None:
    """A random top-left corner where a sprite of `size` overlaps none of `taken`, or None after `attempts`."""
    (w, h), (width, height) = size, canvas
    margin = 2  # Poisson cloning fails when the mask touches the image border.
    if w <= 0 or h <= 0 or w + 2 * margin >= width or h + 2 * margin >= height:
        return None
    for _ in range(attempts):
        x = rng.randint(margin, width - w - margin)
        y = rng.randint(margin, height - h - margin)
        if not _overlaps((x, y, x + w, y + h), taken):
            return x, y
    return None


def render_synthetic(job: dict) -> dict:
    """Render one planned synthetic image. Pure: same job, same bytes.

    Returns the JPEG bytes, every box of the new image (the background's originals
    plus each pasted object's tight box from the transformed alpha) and provenance.
    """
    background_record = Record.from_json(job["background"])
    rng = random.Random(job["seed"])
    with Image.open(background_record.image) as img:
        canvas = img.convert("RGB")
    width, height = canvas.size
    boxes: list[Box] = list(background_record.boxes)
    taken = [(b.x1, b.y1, b.x2, b.y2) for b in boxes]
    placed, unplaced, fallbacks = [], 0, 0
    sources: dict[str, Image.Image] = {}
    for paste in job["pastes"]:
        if paste["image"] not in sources:
            with Image.open(paste["image"]) as src:
                sources[paste["image"]] = src.convert("RGB")
        x1, y1, x2, y2 = paste["box"]
        crop = sources[paste["image"]].crop((math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)))
        sprite = transform_crop(crop, rng.getrandbits(32))
        w, h = sprite.size
        spot = free_spot(rng, (w, h), (width, height), taken, job["max_attempts"])
        if spot is None:
            unplaced += 1
            continue
        if not _blend(canvas, sprite, spot, job["blend"]):
            fallbacks += 1
        box = Box(paste["label"], float(spot[0]), float(spot[1]), float(spot[0] + w), float(spot[1] + h))
        boxes.append(box)
        taken.append((box.x1, box.y1, box.x2, box.y2))
        placed.append(
            {
                "label": paste["label"],
                "source_image": paste["image"],
                "source_box": paste["box"],
                "box": [box.x1, box.y1, box.x2, box.y2],
            }
        )
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return {
        "name": job["name"],
        "jpeg": buffer.getvalue(),
        "width": width,
        "height": height,
        "boxes": boxes,
        "background": background_record.image,
        "background_boxes": len(background_record.boxes),
        "pasted": placed,
        "unplaced": unplaced,
        "poisson_fallbacks": fallbacks,
    }
