"""One image through a replica: admission, the checks on its bytes, decoding under the pixel
budget, the batched model call, and the answer. `/predict`, `/predict/image` and each `/live`
frame all go through `Inference.detect`, so they share one admission count and one batch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from facemask.core.classes import class_counts
from facemask.serving.api_schema import APIError
from facemask.serving.batching import Batcher
from facemask.serving.metrics import replica_metrics
from facemask.serving.request_checks import PixelBudget, decode_cost, decode_for_model, inspect_image, release_memory

# After a request this large, the replica hands freed memory back to the OS.
LARGE_IMAGE_PIXELS = 4_000_000
# Images up to this many decoded pixels (a 640x480 frame) are decoded on the event loop: their
# decode costs less than the hop to a worker thread and back costs the loop under load.
INLINE_DECODE_PIXELS = 310_000


def scaled(detection: dict, scale: float, width: int, height: int) -> dict:
    """A detection's box from the decoded image's pixels to the source's."""
    if scale != 1:
        box = detection["box"]
        detection["box"] = {
            "x1": round(min(box["x1"] * scale, width), 1),
            "y1": round(min(box["y1"] * scale, height), 1),
            "x2": round(min(box["x2"] * scale, width), 1),
            "y2": round(min(box["y2"] * scale, height), 1),
        }
    return detection


class Inference:
    """A replica's images in flight: how many it holds (`pending`, bounded by `max_pending`),
    how many are on their way to the batch (`arriving`, which a batch may wait for), the pixels
    decoded at once (`budget`), and the batch they meet in."""

    def __init__(self, args, backend: str) -> None:
        self.args, self.backend = args, backend
        self.limit = int(args.max_body_mb * 1e6)
        self.pending = 0
        self.arriving = 0  # requests decoding, or waiting for their share of the pixel budget
        self.budget = PixelBudget(int(args.decode_budget_mp * 1e6))
        self.batcher = Batcher(self.run_batch, args.max_batch_size, args.batch_wait_timeout_s, lambda: self.arriving)
        self.releasing: asyncio.TimerHandle | None = None

    @contextlib.asynccontextmanager
    async def admitted(self, refusal: str) -> AsyncIterator[None]:
        """Hold one of the replica's `max_pending` places while inside; a JSON 503 at once when
        they are all taken (`refusal` says what that means for this caller; `{pending}` in it
        becomes the count, formatted only then: this runs on every request)."""
        if self.pending >= self.args.max_pending:
            raise APIError(503, "overloaded", refusal.format(pending=self.pending), headers={"Retry-After": "1"})
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    def check_frame(self, data: bytes) -> None:
        """A frame read whole already (a WebSocket message): empty or over the body limit is refused."""
        if not data:
            raise APIError(400, "empty_body", "an empty frame; send one image per binary message")
        if len(data) > self.limit:
            raise APIError(
                413,
                "body_too_large",
                f"a frame of {len(data)} bytes is over the {self.args.max_body_mb:g} MB limit; send smaller frames",
            )

    async def run_batch(self, items: list[tuple[Any, Any, tuple, float]]) -> list[dict | Exception]:
        """One model call per (model, parameters) group of the requests that queued together
        (`batching`); a group whose call fails answers its own requests with the error."""
        groups: dict[tuple, list[int]] = {}
        for i, (detector, _, params, _) in enumerate(items):
            groups.setdefault((id(detector), params), []).append(i)
        out: list[dict | Exception] = [{} for _ in items]
        for (_, params), indexes in groups.items():
            detector = items[indexes[0]][0]
            started = time.perf_counter()
            try:
                found = await asyncio.to_thread(detector.predict, [items[i][1] for i in indexes], *params)
            except Exception as exc:  # noqa: BLE001 - this group's callers get the error, the other groups their answers
                for i in indexes:
                    out[i] = exc
                continue
            inference_ms = (time.perf_counter() - started) * 1000
            for i, detections in zip(indexes, found):
                out[i] = {
                    "detections": detections,
                    "inference_ms": inference_ms,
                    "queue_ms": (started - items[i][3]) * 1000,
                    "batch_size": len(indexes),
                }
        return out

    async def detect(self, detector, data: bytes, params: tuple, started: float):
        """Check and decode one image's bytes, run it through the batch, and build the answer:
        (decoded image, its scale to the source, the answer)."""
        conf, iou, imgsz, max_det = params
        header = inspect_image(data, self.args.max_pixels)  # the header only: format, size, pixel count
        size = detector.imgsz if imgsz is None else imgsz  # None: the model's operating point
        pixels = decode_cost(header, size)
        self.arriving += 1  # on its way to the batch, which may wait for it
        arrived = False
        try:
            async with self.budget.hold(pixels):
                if pixels <= INLINE_DECODE_PIXELS:
                    image, scale = decode_for_model(header, size)
                else:  # off the event loop: a large image must not stall other requests
                    image, scale = await asyncio.to_thread(decode_for_model, header, size)
                queued, arrived = time.perf_counter(), True
                self.arriving -= 1
                result = await self.batcher.submit((detector, image, (conf, iou, imgsz, max_det), queued))
        finally:
            if not arrived:
                self.arriving -= 1
        if pixels > LARGE_IMAGE_PIXELS:
            self.schedule_release()
        width, height = header.size  # the source's size, turned as its EXIF orientation says
        if image.width != image.height and (image.width > image.height) != (width > height):
            width, height = height, width
        detections = [scaled(d.to_dict(), scale, width, height) for d in result["detections"]]
        answer = {
            "detections": detections,
            "counts": class_counts(detections),
            "image": {"width": width, "height": height},
            "model": self.describe(detector),
            "timings": {
                "decode_ms": round((queued - started) * 1000, 2),
                "queue_ms": round(result["queue_ms"], 2),
                "inference_ms": round(result["inference_ms"], 2),
                "total_ms": round((time.perf_counter() - started) * 1000, 2),
                "batch_size": result["batch_size"],
            },
        }
        replica_metrics().answer(answer)
        return image, scale, answer

    def record_live(self, stream_id: int, people: dict) -> None:
        """A live stream's people so far, for the metrics."""
        replica_metrics().live(stream_id, people)

    def retire_live(self, stream_id: int) -> None:
        """A closed live stream's gauges, retired."""
        replica_metrics().retire_live(stream_id)

    def describe(self, detector) -> dict:
        """What answers say of the model that made them (every model of a replica runs on its backend),
        with the operating point it answers at when not asked otherwise."""
        summary = detector.info.summary(self.backend)
        if detector.point is not None:
            summary["operating_point"] = detector.point.describe()
        return summary

    def schedule_release(self) -> None:
        """Return freed memory to the OS once a burst of large images is over (at most once a second)."""
        if self.releasing is None:
            loop = asyncio.get_running_loop()

            def release() -> None:
                self.releasing = None
                loop.run_in_executor(None, release_memory)

            self.releasing = loop.call_later(1.0, release)
