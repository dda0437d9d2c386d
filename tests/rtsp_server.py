"""A real RTSP server for the camera tests: GStreamer's gst-rtsp-server (Debian's gstreamer1.0-rtsp),
serving JPEG frames encoded live to H.264 (x264), paced by the clock and looped, on loopback.

Run with the system Python, which has PyGObject (python3-gi) and the GstRtspServer typelib:

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --mount /cam --fps 15 'frames/%04d.jpg'

Clients share one live stream, as they do a camera's.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def launch_line(frames: str, fps: int) -> str:
    """JPEG frames (a printf pattern) played in a loop at `fps`, encoded live to H.264: a live source,
    so the RTSP server paces it by the clock and it never ends, as a camera's stream does."""
    return (
        f'( multifilesrc location="{frames}" loop=true caps="image/jpeg,framerate={fps}/1" ! jpegdec ! '
        f"videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! "
        "rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("frames", help="JPEG frames as a printf pattern, e.g. frames/%%04d.jpg")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/cam")
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.frames, args.fps))
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"could not listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    print(f"rtsp://127.0.0.1:{args.port}{args.mount} ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
