"""Real camera streams on loopback for the watch's tests and benchmark.

- `make_video`: an H.264 video (Debian's ffmpeg, libx264) made from generated photos, panning
  slowly as a camera sees people move, at a given size and rate;
- `RtspServer`: GStreamer's RTSP server (tests/rtsp_server.py, run by the system Python with
  python3-gi) streaming those photos as live H.264, looped; stop it and start it again on the same port;
- `MjpegServer`: MJPEG over HTTP (multipart/x-mixed-replace), as IP cameras serve it.

Each server runs as its own process (or thread) and is stopped by its PID, never by name.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from facemask.core.runtime import free_port

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def rtsp_missing() -> str | None:
    """Why RTSP streams cannot be served here, or None."""
    if shutil.which("ffmpeg") is None:
        return "ffmpeg is not installed (Debian's ffmpeg; .ci/run installs it)"
    probe = [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"]
    if not Path(SYSTEM_PYTHON).exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        return "gst-rtsp-server is not usable (Debian's gstreamer1.0-rtsp, gir1.2-gst-rtsp-server-1.0, python3-gi)"
    return None


def scene_frames(width: int, height: int, count: int, seed: int = 0):
    """`count` RGB frames: generated photos, each shown for 5 s at 15 fps while the view pans across it."""
    from facemask.data.synth import synth_image

    rng = random.Random(seed)
    photos = [np.asarray(synth_image(rng)[0].convert("RGB").resize((width, height))) for _ in range(4)]
    for i in range(count):
        photo = photos[(i // 75) % len(photos)]
        yield np.roll(photo, (i % 75) * max(1, width // 320), axis=1)


def make_video(path: Path, width: int, height: int, fps: int = 15, seconds: float = 20, seed: int = 0) -> Path:
    """An H.264 Matroska video of `scene_frames`, a keyframe every second (as cameras send)."""
    command = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}"]
    command += ["-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency"]
    command += ["-g", str(fps), "-pix_fmt", "yuv420p", str(path)]
    encoder = subprocess.Popen(command, stdin=subprocess.PIPE)
    for frame in scene_frames(width, height, int(fps * seconds), seed):
        encoder.stdin.write(frame.tobytes())
    encoder.stdin.close()
    if encoder.wait() != 0:
        raise RuntimeError(f"ffmpeg could not write {path}")
    return path


def write_frames(folder: Path, width: int, height: int, count: int, seed: int = 0) -> str:
    """`count` JPEG frames of `scene_frames` in `folder`; returns their printf pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, jpeg in enumerate(jpeg_frames(width, height, count, seed)):
        (folder / f"{i:04d}.jpg").write_bytes(jpeg)
    return str(folder / "%04d.jpg")


class RtspServer:
    """gst-rtsp-server streaming `frames` (a printf pattern of JPEGs) as live H.264 at
    rtsp://127.0.0.1:PORT/cam; `stop()` and `start()` again on the same port."""

    def __init__(self, frames: str, log: Path, port: int | None = None, fps: int = 15) -> None:
        self.frames, self.log, self.port, self.fps = frames, log, port or free_port(), fps
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RtspServer":
        command = [SYSTEM_PYTHON, str(RTSP_SCRIPT), self.frames, "--port", str(self.port), "--fps", str(self.fps)]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(self.log, "ab"), text=True)
        line = self.proc.stdout.readline()
        if "ready" not in line:
            raise RuntimeError(f"the RTSP server did not start: {line!r}; see {self.log}")
        return self

    def stop(self) -> None:
        """Kill it at once, as a camera losing power does (no RTSP TEARDOWN)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


class MjpegServer:
    """MJPEG over HTTP at http://127.0.0.1:PORT/video.mjpg from a thread: JPEG frames at `fps`."""

    def __init__(self, frames: list[bytes], fps: float = 15.0) -> None:
        server_frames, period = frames, 1.0 / fps

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                start, i = time.monotonic(), 0
                try:
                    while not stopping.is_set():
                        jpeg = server_frames[i % len(server_frames)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n")
                        self.wfile.write(f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                        i += 1
                        stopping.wait(max(0.0, start + i * period - time.monotonic()))
                except (BrokenPipeError, ConnectionResetError):
                    pass

        stopping = threading.Event()
        self.stopping = stopping
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/video.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "MjpegServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def jpeg_frames(width: int, height: int, count: int, seed: int = 0) -> list[bytes]:
    import cv2

    return [
        cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
        for f in scene_frames(width, height, count, seed)
    ]
