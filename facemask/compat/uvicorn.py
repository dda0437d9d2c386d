"""uvicorn's private parts the proxy guard uses to bound headers and connections: its httptools
protocol class (subclassed: uvicorn has no hook for a slow or oversized header) and the global
`uvicorn.Config` (replaced, because Serve builds the server's Config itself and passes no
protocol of ours)."""

from __future__ import annotations

from facemask.compat import require

CHECKED = ("uvicorn", "0.55", "0.56")
VERSION = require(*CHECKED, __name__)


def http_tools_protocol() -> type | None:
    """uvicorn's httptools HTTP/1.1 protocol class, or None when httptools is not installed."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None
    return HttpToolsProtocol


def serve_new_servers_with(protocol: type) -> None:
    """Every uvicorn server this process starts from now on uses `protocol` for HTTP (unless
    its Config names one); done once per process."""
    import uvicorn

    if getattr(uvicorn.Config, "facemask_bounded", False):
        return

    class BoundedConfig(uvicorn.Config):
        facemask_bounded = True

        def __init__(self, *args, **kwargs) -> None:
            if kwargs.get("http", "auto") == "auto":
                kwargs["http"] = protocol
            super().__init__(*args, **kwargs)

    uvicorn.Config = BoundedConfig
