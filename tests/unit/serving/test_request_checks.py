"""Decoding for the model: a large JPEG is drafted down to what the model's input needs, boxes map back."""

import io

import pytest
from PIL import Image

from facemask.core.errors import ConfigError
from facemask.serving.request_checks import checked_api_key, decode_cost, decode_for_model, inspect_image


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 80, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "size, imgsz, decoded",
    [
        ((1920, 1080), 640, (960, 540)),  # 1/2: the smallest scale still covering 640
        ((1920, 1080), 320, (480, 270)),  # 1/4
        ((4000, 3000), 640, (1000, 750)),  # 1/4
        ((600, 400), 640, (600, 400)),  # smaller than the input: whole
    ],
)
def test_a_large_jpeg_decodes_between_once_and_twice_the_input(size, imgsz, decoded):
    header = inspect_image(jpeg(*size), 40_000_000)
    cost = decode_cost(header, imgsz)
    image, scale = decode_for_model(header, imgsz)
    assert image.size == decoded
    assert max(decoded) >= min(imgsz, max(size)) and scale == pytest.approx(max(size) / max(decoded))
    assert image.width * image.height <= cost  # the pixel budget holds what decoding takes


def test_png_decodes_whole():
    buffer = io.BytesIO()
    Image.new("RGB", (1920, 1080)).save(buffer, format="PNG")
    header = inspect_image(buffer.getvalue(), 40_000_000)
    assert decode_cost(header, 640) == 1920 * 1080
    assert decode_for_model(header, 640)[0].size == (1920, 1080)


def test_an_api_key_that_protects_nothing_is_refused():
    assert checked_api_key("k" * 16, True, "here") == "k" * 16
    assert checked_api_key(None, False, "here") is None and checked_api_key("", False, "here") is None
    with pytest.raises(ConfigError, match="here is the placeholder"):
        checked_api_key("CHANGE-ME-to-a-long-random-string", False, "here")
    with pytest.raises(ConfigError, match="has 5 characters, fewer than 16"):
        checked_api_key("short", False, "here")
    with pytest.raises(ConfigError, match="require_api_key: true, and here has no FACEMASK_API_KEY"):
        checked_api_key("", True, "here")
