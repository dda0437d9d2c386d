"""The request checks, and the route labels metrics use. Each checked against known answers (the fast
tier: `make test-fast`)."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from facemask.serving.api_schema import APIError
from facemask.serving.request_checks import check_model_id, declared_size, decode_image, inspect_image

# ---------------------------------------------------------------- request checks


def png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def zero_size_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_declared_size_reads_png_and_bmp_headers():
    assert declared_size(png_bytes(7, 5)) == (7, 5)
    bmp = io.BytesIO()
    Image.new("RGB", (9, 4)).save(bmp, format="BMP")
    assert declared_size(bmp.getvalue()) == (9, 4)
    assert declared_size(b"GIF89a....") == (None, None)


@pytest.mark.parametrize(
    "make, status, error",
    [
        (lambda: b"not an image at all", 400, "not_an_image"),
        (zero_size_png, 400, "zero_size_image"),
        (lambda: png_bytes(300, 300), 413, "too_many_pixels"),
        (lambda: _gif(), 415, "unsupported_format"),
    ],
)
def test_inspect_image_refuses_with_status_and_code(make, status, error):
    with pytest.raises(APIError) as err:
        inspect_image(make(), max_pixels=200 * 200)
    assert (err.value.status, err.value.error) == (status, error)


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (4, 4)).save(buffer, format="GIF")
    return buffer.getvalue()


def test_inspect_accepts_and_decode_refuses_a_truncated_image():
    data = png_bytes(64, 64)
    image = inspect_image(data, max_pixels=10**6)
    assert image.size == (64, 64) and image.format == "PNG"
    jpeg = io.BytesIO()
    Image.effect_noise((256, 256), 50).convert("RGB").save(jpeg, format="JPEG")
    truncated = jpeg.getvalue()[: len(jpeg.getvalue()) // 3]
    with pytest.raises(APIError) as err:
        decode_image(truncated, max_pixels=10**6)
    assert err.value.error == "truncated_image"


@pytest.mark.parametrize(
    "model_id, ok",
    [
        ("3", True),
        ("champion", True),
        ("v1.2_rc-1", True),
        ("", True),
        ("../etc", False),
        ("a b", False),
        ("x" * 65, False),
        ("-lead", False),
    ],
)
def test_check_model_id(model_id, ok):
    if ok:
        assert check_model_id(model_id) == model_id
    else:
        with pytest.raises(APIError) as err:
            check_model_id(model_id)
        assert err.value.status == 400
