"""Boxes drawn on images: the class colours, the labels, and a line width that follows the
image's size. Used by the Serve replicas, batch inference and the dataset pictures."""

from __future__ import annotations

from PIL import Image, ImageDraw

from facemask.core.classes import CLASS_NAMES

# One colour per class id, shared by every picture the project draws (BGR-free RGB).
CLASS_COLORS: tuple[tuple[int, int, int], ...] = ((46, 204, 113), (231, 76, 60), (241, 196, 15))


def box_width(size: tuple[int, int]) -> int:
    """Line width for an image of `size`: 2 px, and 1 px more per 300 px of its longer side,
    so boxes stay visible on a 4K frame without hiding small faces on a thumbnail."""
    return max(2, round(max(size) / 300))


def draw_boxes(
    image: Image.Image, boxes: list[tuple[int, float, float, float, float]], width: int | None = None
) -> Image.Image:
    """Draw (class_id, x1, y1, x2, y2) boxes in class colours with their labels; width defaults to `box_width`."""
    out = image.convert("RGB")
    width = width or box_width(out.size)
    draw = ImageDraw.Draw(out)
    for cls, x1, y1, x2, y2 in boxes:
        color = CLASS_COLORS[int(cls) % len(CLASS_COLORS)]
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        draw.text((x1 + 2, max(0, y1 - 11)), CLASS_NAMES[int(cls)], fill=color)
    return out
