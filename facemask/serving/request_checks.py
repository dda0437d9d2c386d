"""Checks on an incoming request, cheapest first: body size, multipart, image header, pixels, model id.

Pure functions of the request or its bytes, each raising `APIError` with the status and
code a client sees; the deployments call them before anything reaches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hmac
import io
import re
import struct
import warnings

from fastapi import Request

from facemask.core.errors import ConfigError
from facemask.core.settings import INFERENCE, INFERENCE_BOUNDS
from facemask.detection.detector import upright_rgb
from facemask.serving.api_schema import MULTIPLEX_HEADER, SUPPORTED_FORMATS, APIError

MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


async def read_body(request: Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The request body, refusing (413) as soon as it passes `limit` bytes, or (408) when it
    has not all arrived `timeout_s` after the first byte was awaited: a client that declares
    more than it sends must not hold a connection and a request slot."""
    declared = request.headers.get("content-length")
    too_large = APIError(413, "body_too_large", f"the body is over the {limit / 1e6:g} MB limit; send a smaller image")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise APIError(
                408,
                "body_timeout",
                f"the body did not arrive within {timeout_s:g} s "
                f"({size} bytes came{f' of {declared}' if declared else ''}); send it again",
            ) from None
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The uploaded image: multipart field `file`, or the raw body."""
    body = await read_body(request, limit, timeout_s)
    if not body:
        raise APIError(
            400, "empty_body", "the request has no image: send it as multipart field 'file' or as the raw body"
        )
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form(max_files=1, max_fields=10)
    except Exception as exc:  # malformed multipart: several parser error types
        raise APIError(400, "bad_multipart", f"the multipart body could not be parsed ({exc})") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise APIError(400, "empty_body", "multipart upload has no file field named 'file'")
    data = await upload.read()
    if not data:
        raise APIError(400, "empty_body", f"the uploaded file {upload.filename!r} is empty")
    return data


def decode_image(data: bytes, max_pixels: int):
    """Bytes to an RGB PIL image, or an APIError saying exactly what is wrong with them."""
    return load_rgb(inspect_image(data, max_pixels))


def inspect_image(data: bytes, max_pixels: int):
    """Check format, size and pixel count from the header alone (cheap); the pixels are not decoded yet."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise APIError(413, "too_many_pixels", f"the image has more than {max_pixels} pixels; downscale it") from None
    except Exception:  # Ultralytics patches Image.open, which then raises other types than PIL's
        width, height = declared_size(data)
        if width == 0 or height == 0:
            raise APIError(400, "zero_size_image", f"the image header declares {width}x{height} pixels") from None
        raise APIError(
            400, "not_an_image", "the body is not an image Pillow can read (send JPEG, PNG, WebP or BMP)"
        ) from None
    if image.format not in SUPPORTED_FORMATS:
        raise APIError(
            415,
            "unsupported_format",
            f"{image.format} images are not supported; send one of {', '.join(SUPPORTED_FORMATS)}",
        )
    width, height = image.size
    if width <= 0 or height <= 0:
        raise APIError(400, "zero_size_image", f"the image is {width}x{height} pixels")
    if width * height > max_pixels:
        raise APIError(
            413,
            "too_many_pixels",
            f"the image is {width}x{height} = {width * height} pixels, over the {max_pixels} limit; downscale it",
        )
    return image


def load_rgb(image):
    """Decode an inspected image; a truncated or corrupt body is an APIError, not a crash."""
    try:
        image.load()
        return upright_rgb(image)
    except Exception as exc:
        raise APIError(
            400, "truncated_image", f"the {image.format} image could not be decoded ({exc}); is the file complete?"
        ) from None


def decode_for_model(image, imgsz: int):
    """Decode at no more than twice the model's input where the format allows it.

    A JPEG larger than the model's input is decoded by Pillow's `draft` at 1/2, 1/4 or 1/8
    scale straight from its DCT, at the smallest of those that still covers the input (so
    between once and twice `imgsz` on its long side): a 1920x1080 frame at imgsz 640 costs
    a quarter of its pixels and a third of the CPU, and a 12-megapixel phone photo a few
    hundred kilopixels of memory, not twelve million. Returns (image, scale): multiply the
    image's pixel coordinates by `scale` for the source's (after EXIF rotation), which is
    what answers report. `image` is what `inspect_image` returned (header read, pixels not
    yet decoded).
    """
    long_side = max(image.size)
    if image.format in ("JPEG", "MPO") and long_side > imgsz:
        ratio = imgsz / long_side
        image.draft("RGB", (max(1, round(image.size[0] * ratio)), max(1, round(image.size[1] * ratio))))
    decoded = load_rgb(image)
    return decoded, long_side / max(decoded.size)


def decode_cost(image, imgsz: int) -> int:
    """Pixels `decode_for_model` will hold for an inspected image (a JPEG is drafted down)."""
    width, height = image.size
    if image.format in ("JPEG", "MPO") and max(width, height) > imgsz:
        # draft picks the largest 1/2^k scale that is still at least the size asked for: under 4x its area.
        return min(width * height, 4 * imgsz**2)
    return width * height


class PixelBudget:
    """At most `limit` decoded pixels at once in this process; a request waits for its share.

    Decoded images are what grows a replica's memory with concurrent large inputs; holding
    a share from decoding to the answer bounds it. One image larger than the whole budget
    still runs, alone.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int):
        pixels = min(pixels, self.limit)
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            async with self._changed:
                self.used -= pixels
                self._changed.notify_all()


def release_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise): a replica shrinks after a burst."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def declared_size(data: bytes) -> tuple[int | None, int | None]:
    """Width and height from a PNG or BMP header; Pillow refuses zero-size files without saying why."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return width, abs(height)
    return None, None


# The shortest key accepted, and what placeholders in the project's own files begin with.
MIN_KEY_CHARS = 16
PLACEHOLDER_PREFIX = "CHANGE-ME"


def checked_api_key(key: str | None, required: bool, where: str) -> str | None:
    """The endpoint's key, refused in one line when it cannot protect anything: a placeholder,
    too short, or none where `required` (a deployment configured for a key fails closed)."""
    key = key or None
    fix = "set FACEMASK_API_KEY to a random string (`openssl rand -hex 24`) on every node, or in the Secret"
    if key is not None and key.startswith(PLACEHOLDER_PREFIX):
        raise ConfigError(f"FACEMASK_API_KEY in {where} is the placeholder {key[:40]!r}: {fix}")
    if key is not None and len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"FACEMASK_API_KEY in {where} has {len(key)} characters, fewer than {MIN_KEY_CHARS}: {fix}")
    if key is None and required:
        raise ConfigError(
            f"this deployment has require_api_key: true, and {where} has no FACEMASK_API_KEY: {fix}; "
            "it will not serve without one"
        )
    return key


def key_matches(key: str | None, given: str | None) -> bool:
    """True when no key is set, or `given` is it (compared in constant time)."""
    return key is None or (given is not None and hmac.compare_digest(given.encode(), key.encode()))


def check_model_id(model_id: str) -> str:
    if model_id and not MODEL_ID.match(model_id):
        raise APIError(
            400,
            "bad_model_id",
            f"{MULTIPLEX_HEADER} {model_id[:70]!r}: expected a version number (3) or an alias (champion)",
        )
    return model_id


def checked_setting(name: str, value, kind: type, bounds: dict = INFERENCE_BOUNDS) -> int | float:
    """`value` (a JSON number, or a query string's text) as `kind` within its bounds, else APIError 422 naming both."""
    low, high = bounds[name]
    if isinstance(value, str):
        try:
            value = float(value) if kind is float else int(value)
        except ValueError:
            pass
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not low <= value <= high
        or (kind is int and value != int(value))
    ):
        raise APIError(
            422,
            "invalid_parameter",
            f"{name}: expected {'an integer' if kind is int else 'a number'} from {low:g} to {high:g}, got {value!r}",
        )
    return kind(value)


def inference_query(query) -> tuple[float | None, float, int | None, int]:
    """conf, iou, imgsz, max_det from a request's query parameters, each checked. Absent: iou and
    max_det are settings.INFERENCE's; conf and imgsz are None, which the detector reads as its
    model's operating point (chosen on val; else 0.25 for every class at 640).

    The prediction routes read their query here rather than through FastAPI's parameter
    solving, which cost the replica about a tenth of its CPU per request.
    """
    return tuple(
        checked_setting(name, value, kind) if (value := query.get(name)) is not None else default
        for name, kind, default in (
            ("conf", float, None),
            ("iou", float, INFERENCE.iou),
            ("imgsz", int, None),
            ("max_det", int, INFERENCE.max_det),
        )
    )
