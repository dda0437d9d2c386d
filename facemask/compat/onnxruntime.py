"""onnxruntime's global `SessionOptions`, replaced while Ultralytics creates a session: Ultralytics
builds its `InferenceSession` itself and passes no options, and onnxruntime's threads busy-wait
between runs by default, taking the CPU from the HTTP path and from other replicas."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from facemask.compat import require

CHECKED = ("onnxruntime", "1.18", "1.33")
VERSION = require(*CHECKED, __name__)
# A replica loads several versions (multiplexing) on threads of its own: one swap at a time,
# or a load that started during another's could keep the other's options, or the stand-in.
_SWAP = threading.Lock()


@contextlib.contextmanager
def session_options(threads: int) -> Iterator[None]:
    """While inside: every onnxruntime session created in this process gets `threads` intra-op
    threads and no spinning."""
    import onnxruntime

    with _SWAP:
        original = onnxruntime.SessionOptions

        def limited(*args, **kwargs):
            options = original(*args, **kwargs)
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return options

        onnxruntime.SessionOptions = limited
        try:
            yield
        finally:
            onnxruntime.SessionOptions = original
