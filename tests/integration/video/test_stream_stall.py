"""`facemask predict` on a stream that stalls (issue item 16): a real MJPEG server on loopback sends
a few frames and then nothing; stopping the reader while OpenCV is blocked in `read()` must not
release the capture under it (that crashed the process at a stop)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.services import wait_until
from tests.streams import jpeg_frames

pytestmark = pytest.mark.integration


class StallingMjpeg:
    """MJPEG over HTTP that sends `frames` and then holds the connection open, silent, until `close()`."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames, self.sock = frames, socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/video.mjpg"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
            for jpeg in self.frames:
                conn.sendall(
                    b"--frame\r\nContent-Type: image/jpeg\r\n" + f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                )
                conn.sendall(jpeg + b"\r\n")

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


class WatchedCapture:
    """A real OpenCV capture that remembers which thread released it, and whether a read was under way."""

    def __init__(self, capture) -> None:
        self.capture, self.reading, self.released_while_reading, self.released_by = capture, False, None, None

    def read(self):
        self.reading = True
        try:
            return self.capture.read()
        finally:
            self.reading = False

    def release(self) -> None:
        self.released_while_reading, self.released_by = self.reading, threading.current_thread().name
        if not self.reading:
            self.capture.release()


def test_item_16_stopping_a_reader_blocked_on_a_stalled_stream_never_releases_the_capture_under_it():
    from facemask.video.streams import StreamReader, open_stream

    server = StallingMjpeg(jpeg_frames(160, 120, 4, seed=3))
    try:
        capture = WatchedCapture(open_stream(server.url))
        reader = StreamReader(capture, time.perf_counter(), join_s=0.5)
        wait_until(lambda: reader.frames >= 3 and capture.reading, 30, "the reader blocked on the stalled stream")
        stopped = reader.stop()
        assert capture.released_by is None and reader.thread.is_alive(), "released while the read was blocked"
        assert stopped is False
    finally:
        server.close()  # the stream ends: the blocked read returns, and the reader releases the capture
    wait_until(lambda: capture.released_by is not None, 60, "the capture released by its reader")
    assert capture.released_by == "stream-reader" and capture.released_while_reading is False
