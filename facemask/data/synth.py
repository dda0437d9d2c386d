"""Procedural demo data in the exact Kaggle layout, so the demo and tests need no download.

Faces are drawn so the three classes differ the way real ones do: with_mask covers nose
and mouth, mask_weared_incorrect sits below the nose (nose visible), without_mask shows
the whole face. Several faces per image, varied scale, skin tone, mask colour and
background; deterministic per seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from PIL import Image, ImageDraw, ImageFilter

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import ConfigError

SKIN = [(255, 224, 196), (234, 192, 134), (198, 134, 66), (141, 85, 36), (224, 172, 105), (255, 205, 148)]
HAIR = [(20, 20, 20), (70, 40, 20), (120, 80, 40), (200, 170, 90), (90, 90, 90)]
MASK = [(170, 210, 240), (245, 245, 245), (40, 40, 45), (240, 170, 200), (120, 190, 150)]
# Roughly the Kaggle balance, so the minority classes are rare here too.
CLASS_WEIGHTS = (0.6, 0.27, 0.13)


@dataclass(frozen=True)
class SynthFace:
    label: str
    box: tuple[int, int, int, int]


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    top = tuple(rng.randint(40, 230) for _ in range(3))
    bottom = tuple(rng.randint(40, 230) for _ in range(3))
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(height):
        t = y / max(1, height - 1)
        draw.line([(0, y), (width, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))
    for _ in range(rng.randint(3, 10)):
        x, y = rng.randint(0, width), rng.randint(0, height)
        w, h = rng.randint(20, width // 2), rng.randint(20, height // 2)
        color = tuple(rng.randint(30, 220) for _ in range(3))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape((x, y, x + w, y + h), fill=color)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))


def draw_face(draw: ImageDraw.ImageDraw, rng: random.Random, box: tuple[int, int, int, int], label: str) -> None:
    """Draw one face of class `label` filling `box` (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1

    def at(fx: float, fy: float) -> tuple[float, float]:
        return x1 + fx * w, y1 + fy * h

    skin = rng.choice(SKIN)
    shade = tuple(max(0, c - 45) for c in skin)
    draw.ellipse(box, fill=skin, outline=shade)
    if rng.random() < 0.8:
        draw.chord((x1, y1, x2, y1 + 0.6 * h), 180, 360, fill=rng.choice(HAIR))
    for fx in (0.32, 0.68):
        ex, ey = at(fx, 0.42)
        draw.ellipse((ex - 0.09 * w, ey - 0.05 * h, ex + 0.09 * w, ey + 0.05 * h), fill=(250, 250, 250))
        draw.ellipse((ex - 0.04 * w, ey - 0.04 * h, ex + 0.04 * w, ey + 0.04 * h), fill=(30, 30, 60))
    draw.polygon([at(0.5, 0.47), at(0.42, 0.64), at(0.58, 0.64)], fill=shade)
    draw.ellipse((*at(0.36, 0.72), *at(0.64, 0.82)), fill=(170, 40, 50))
    if label == "without_mask":
        return
    # with_mask starts above the nose; a mask worn incorrectly starts below it.
    top = 0.5 if label == "with_mask" else 0.68
    color = rng.choice(MASK)
    edge = tuple(max(0, c - 60) for c in color)
    draw.polygon([at(0.12, top), at(0.88, top), at(0.84, 0.9), at(0.5, 0.99), at(0.16, 0.9)], fill=color, outline=edge)
    for fy in (top + 0.1, top + 0.2):
        if fy < 0.92:
            draw.line([at(0.2, fy), at(0.8, fy)], fill=edge, width=max(1, w // 40))
    for fx in (0.02, 0.98):
        draw.line([at(fx, 0.45), at(0.12 if fx < 0.5 else 0.88, top + 0.05)], fill=edge, width=max(1, w // 30))


def synth_image(rng: random.Random) -> tuple[Image.Image, list[SynthFace]]:
    """One image with 1-6 non-overlapping faces of varied scale."""
    width, height = rng.randint(320, 480), rng.randint(240, 400)
    img = _background(rng, width, height)
    draw = ImageDraw.Draw(img)
    faces: list[SynthFace] = []
    for _ in range(rng.randint(1, 6)):
        fw = rng.randint(34, min(120, width // 3))
        fh = int(fw * rng.uniform(1.15, 1.35))
        for _attempt in range(30):
            x, y = rng.randint(0, width - fw - 1), rng.randint(0, height - fh - 1)
            box = (x, y, x + fw, y + fh)
            if all(box[2] <= f.box[0] or f.box[2] <= box[0] or box[3] <= f.box[1] or f.box[3] <= box[1] for f in faces):
                label = rng.choices(CLASS_NAMES, weights=CLASS_WEIGHTS)[0]
                draw_face(draw, rng, box, label)
                faces.append(SynthFace(label, box))
                break
    return img, faces


def voc_xml(filename: str, width: int, height: int, faces: list[SynthFace]) -> str:
    """Pascal VOC XML in the Kaggle files' shape."""
    objects = "".join(
        f"""    <object>
        <name>{escape(f.label)}</name>
        <pose>Unspecified</pose>
        <truncated>0</truncated>
        <occluded>0</occluded>
        <difficult>0</difficult>
        <bndbox>
            <xmin>{f.box[0]}</xmin>
            <ymin>{f.box[1]}</ymin>
            <xmax>{f.box[2]}</xmax>
            <ymax>{f.box[3]}</ymax>
        </bndbox>
    </object>
"""
        for f in faces
    )
    return f"""<annotation>
    <folder>images</folder>
    <filename>{escape(filename)}</filename>
    <size>
        <width>{width}</width>
        <height>{height}</height>
        <depth>3</depth>
    </size>
    <segmented>0</segmented>
{objects}</annotation>
"""


def synthesize(out: Path, images: int = 120, seed: int = 0) -> dict[str, int]:
    """Write `images` procedural images and their VOC XML under out/{images,annotations}.

    Returns the object count per class. Each image has its own seed derived from
    `seed`, so any image can be regenerated alone and the output never depends on order.
    """
    if images < 1:
        raise ConfigError(f"--images {images}: need at least 1")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {c: 0 for c in CLASS_NAMES}
    for i in range(images):
        rng = random.Random(f"{seed}:{i}")
        img, faces = synth_image(rng)
        name = f"synthface{i:05d}.png"
        img.save(out / "images" / name)
        (out / "annotations" / f"synthface{i:05d}.xml").write_text(voc_xml(name, *img.size, faces))
        for f in faces:
            counts[f.label] += 1
    return counts
