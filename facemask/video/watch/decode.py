"""Opening and decoding a camera's stream: PyAV (FFmpeg) for URLs and files, OpenCV for a device index.

A frame stays as the decoder made it (YUV planes) until the model takes it: a frame that a
newer one replaces costs its decoding only. The one taken is shrunk plane by plane and turned
into RGB at the model's size, which costs a fifth of converting the full frame first (1080p:
0.9 ms against 1.9 ms for OpenCV's full-size BGR, then 0.5 ms to shrink it, on this machine).

One decoding thread per camera: cameras are the parallelism. FFmpeg's frame threads cost
14% more CPU per 1080p frame here, and hide the decode from the reader thread's CPU clock.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OPEN_TIMEOUT_S = 5.0
# A stream that sends nothing for this long is treated as dead and opened again.
READ_TIMEOUT_S = 3.0
PLANAR = ("yuv420p", "yuvj420p")
PROBE_US = 1_000_000


class StreamError(Exception):
    """The stream could not be opened or read; the message says why, for the camera's status."""


def open_stream(url: str, transport: str = "tcp", fast_decode: bool = False):
    """A `DeviceStream` for a device index, else an `AvStream`; StreamError if it cannot open."""
    return DeviceStream(int(url)) if url.isdigit() else AvStream(url, transport, fast_decode)


class AvStream:
    """RTSP, HTTP (MJPEG, HLS, ...) or a file through PyAV, one decoding thread."""

    def __init__(self, url: str, transport: str, fast_decode: bool) -> None:
        import av

        options = {"rtsp_transport": transport} if url.lower().startswith("rtsp") else {}
        if "://" in url:
            # FFmpeg probes a stream for 5 s by default: an RTSP camera took 1.9 s to open here, 0.6 s
            # with 0.5 s. A camera's stream describes itself in its SDP or first keyframe.
            options["analyzeduration"] = str(PROBE_US)
        try:
            self.container = av.open(url, options=options, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S))
            self.stream = self.container.streams.video[0]
        except (av.FFmpegError, IndexError, OSError) as exc:
            raise StreamError(f"could not open it: {exc}") from exc
        self.stream.thread_type = "NONE"
        self.stream.codec_context.thread_count = 1
        if fast_decode:
            # No deblocking filter: 12-26% of a 1080p H.264 frame's decoding here; the blocks it
            # smooths are gone once the frame is shrunk by 3 for the model.
            self.stream.codec_context.options = {"skip_loop_filter": "all"}
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else None
        # Whose timestamps keep time: a file's, and RTSP's (RTP carries the camera's clock). MJPEG
        # over HTTP has none; FFmpeg numbers its frames at 25 fps whatever the camera sends.
        self.clocked = "://" not in url or url.lower().startswith("rtsp")
        self.frames = self.container.decode(self.stream)

    def read(self) -> Any | None:
        """The next decoded frame, or None at the end of the stream; StreamError when it fails."""
        import av

        try:
            return next(self.frames)
        except StopIteration:
            return None
        except (av.FFmpegError, OSError) as exc:
            raise StreamError(f"the stream failed: {exc}") from exc

    @staticmethod
    def timestamp(frame) -> float | None:
        """The frame's time in the stream, in seconds (None when the stream gives none)."""
        return frame.time

    def keyframes_only(self, on: bool) -> bool:
        """Skip every frame but keyframes (a reader that cannot keep up), or stop skipping; True if done."""
        self.stream.codec_context.skip_frame = "NONKEY" if on else "DEFAULT"
        return True

    def rewind(self) -> bool:
        """Back to the start (a file played in a loop); False if the source cannot seek."""
        import av

        try:
            self.container.seek(0)
        except (av.FFmpegError, OSError):
            return False
        self.frames = self.container.decode(self.stream)
        return True

    @staticmethod
    def size(frame) -> tuple[int, int]:
        return frame.width, frame.height

    @staticmethod
    def to_rgb(frame, width: int, height: int) -> np.ndarray:
        import cv2

        if frame.format.name not in PLANAR or (width, height) == (frame.width, frame.height):
            return frame.to_ndarray(format="rgb24", width=width, height=height)
        planes = frame.to_ndarray()  # Y, then U and V at half size, stacked: (h * 3/2, w)
        h, w = frame.height, frame.width
        y = cv2.resize(planes[:h], (width, height), interpolation=cv2.INTER_LINEAR)
        chroma = planes[h:].reshape(2, h // 2, w // 2)
        u, v = (cv2.resize(p, (width // 2, height // 2), interpolation=cv2.INTER_LINEAR) for p in chroma)
        i420 = np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(height * 3 // 2, width)
        return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)

    def close(self) -> None:
        self.container.close()


class DeviceStream:
    """A local camera (/dev/videoN) through OpenCV: frames are BGR arrays."""

    clocked = False

    def __init__(self, index: int) -> None:
        import cv2

        self.capture = cv2.VideoCapture(index)
        if not self.capture.isOpened():
            self.capture.release()
            raise StreamError(f"could not open camera {index} (is it plugged in, and free?)")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 1 <= fps <= 240 else None

    def read(self) -> np.ndarray | None:
        ok, frame = self.capture.read()
        if not ok:
            raise StreamError("the camera stopped sending frames")
        return frame

    def rewind(self) -> bool:
        return False

    @staticmethod
    def timestamp(frame: np.ndarray) -> None:
        return None

    def keyframes_only(self, on: bool) -> bool:
        return False  # a local camera's frames come one by one: nothing to skip

    @staticmethod
    def size(frame: np.ndarray) -> tuple[int, int]:
        return frame.shape[1], frame.shape[0]

    @staticmethod
    def to_rgb(frame: np.ndarray, width: int, height: int) -> np.ndarray:
        import cv2

        if (width, height) != (frame.shape[1], frame.shape[0]):
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.capture.release()
