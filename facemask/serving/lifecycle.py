"""An endpoint's life in one process: Serve started and the app deployed, held until a stop
signal, and Serve stopped within a deadline. `facemask serve` and `jobs/demo.py` use it."""

from __future__ import annotations

import contextlib
import sys

from facemask.core.lifecycle import end_processes, note_processes


def wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM, which arrive as KeyboardInterrupt (`handle_stop_signals`),
    noting what runs below this process meanwhile, so that a stop can end it all (`note_processes`)."""
    import time

    while True:
        note_processes()
        time.sleep(1.0)


SHUTDOWN_TIMEOUT_S = 15.0


def stop_serving(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> bool:
    """Delete the apps and stop Serve, but never wait past `timeout_s`; False when it did not finish in time.

    When SIGTERM reaches every process of the command (systemd's control-group kill; a signal
    to the process group no longer reaches a local Ray, which has a group of its own), a local
    Ray started here dies with this process, and `serve.shutdown()` would wait for its
    controller for ever; the Ray processes are gone then, so there is nothing left to stop.
    """
    import threading

    from ray import serve

    done = threading.Event()

    def shutdown() -> None:
        with contextlib.suppress(Exception):
            serve.shutdown()
        done.set()

    threading.Thread(target=shutdown, name="serve-shutdown", daemon=True).start()
    if not done.wait(timeout_s):
        print(
            f"warning: Serve did not shut down within {timeout_s:.0f}s (its cluster is gone?); exiting", file=sys.stderr
        )
        return False
    return True


def start_serving(
    args, host: str = "127.0.0.1", port: int = 8000, name: str = "facemask", log_level: str = "INFO"
) -> str:
    """Start Serve's proxy on host:port and deploy the app; returns its URL once it answers."""
    from ray import serve

    from facemask.serving.deployment import build_app

    logging_config = {"log_level": log_level}
    serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)
    serve.run(build_app(args), name=name, route_prefix="/", logging_config=logging_config)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def serve_until_stopped(args, host: str, port: int, announce) -> None:
    """Serve `args` on this process's Ray until Ctrl-C or SIGTERM, then stop Serve and Ray and
    everything they started here. `announce(url)` is the line printed once the app answers."""
    import ray

    try:
        url = start_serving(args, host=host, port=port)
        print(announce(url), flush=True)
        wait_for_stop()
    finally:
        started = note_processes()  # what runs below this process now, and what ran below it
        stopped = stop_serving()
        if not stopped:
            # Serve's call still waits in its thread: Ray's shutdown under it crashes the process,
            # so what Ray started here is ended first.
            end_processes(started)
        ray.shutdown()
        # A HAProxy that Serve restarted after a crash outlives Serve's shutdown; nothing else should.
        end_processes(started)
