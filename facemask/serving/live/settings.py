"""A live stream's settings: the first message of a /live stream, and any JSON text message after it."""

from __future__ import annotations

from facemask.core.settings import INFERENCE, INFERENCE_BOUNDS
from facemask.serving.api_schema import APIError
from facemask.serving.request_checks import check_model_id, checked_setting

# The settings a live stream starts with; its first message and later text messages change them.
# A live frame holds fewer faces than a photo, hence its own max_det. conf and imgsz None: the
# model's operating point (per-class thresholds and size, chosen on val), else 0.25 at 640.
LIVE_DEFAULTS = {"conf": None, "iou": INFERENCE.iou, "imgsz": None, "max_det": 100, "model": "", "fps": 30.0}
LIVE_IMGSZ = 320  # a live frame's size for a version without an operating point
LIVE_KINDS = {"conf": float, "iou": float, "imgsz": int, "max_det": int, "fps": float}
LIVE_LIMITS = {**INFERENCE_BOUNDS, "fps": (1.0, 120.0)}


def live_settings(message: dict, current: dict) -> dict:
    """`current` updated with a stream message's settings, each checked as /predict checks its query.

    Unknown fields and out-of-range values raise APIError 422 naming the field and its range.
    """
    if not isinstance(message, dict):
        raise APIError(422, "invalid_parameter", "a text message must be a JSON object of settings")
    unknown = sorted(set(message) - set(LIVE_DEFAULTS) - {"key"})
    if unknown:
        raise APIError(
            422, "invalid_parameter", f"unknown setting {unknown[0]!r}; known: key, {', '.join(LIVE_DEFAULTS)}"
        )
    out = dict(current)
    for name, value in message.items():
        if name == "key":
            continue
        if name == "model":
            if not isinstance(value, str):
                raise APIError(422, "invalid_parameter", "model: a version number or an alias, as a string")
            out[name] = check_model_id(value.strip())
            continue
        if value is None and name in ("conf", "imgsz"):  # back to the model's own
            out[name] = None
            continue
        out[name] = checked_setting(name, value, LIVE_KINDS[name], LIVE_LIMITS)
    return out
