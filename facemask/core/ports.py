"""Ports a command chooses for the servers it starts: a documented one (Ray's metrics 8080,
HAProxy's 9101) while it is free and no other facemask command on this machine has chosen it,
else a free one where no outgoing connection takes it meanwhile.

A leaf: imports nothing of facemask's; nothing runs at import.
"""

from __future__ import annotations

import socket
from pathlib import Path


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens on it on loopback and no other facemask process on this
    machine has chosen it (reserve_port), else a free port below the kernel's ephemeral range.

    Why not the kernel's own choice (bind to port 0): it comes from the ephemeral range, where
    every outgoing connection takes its local port. A server binds the port seconds after it is
    chosen, and under load (a test's clients opening connection after connection) one of them
    had taken it meanwhile: HAProxy then refused to start. Below that range, and above Ray's
    worker ports (10002-19999), no connection takes a port unasked."""
    import random

    if preferred and reserve_port(preferred) and bindable(preferred):
        return preferred
    low = _ephemeral_low()
    candidates = random.sample(range(20000, low), min(64, low - 20000)) if low > 20000 else []
    for port in candidates:
        if bindable(port):
            return port
    with socket.socket() as s:  # every candidate taken: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bindable(port: int) -> bool:
    """Whether nothing holds `port` on loopback now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections (Linux's default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_RESERVED: dict[int, object] = {}  # port: the open lock file, held for the life of this process


def reserve_port(port: int) -> bool:
    """Reserve a documented port (8080, 9101) for this process, machine-wide, until it exits: an
    exclusive flock on a file named after it in the temp folder. A port checked free is bound only
    seconds later, by Ray's node or HAProxy: two commands starting together both found it free,
    and the one that lost it never came up (Ray waits its 30 s for a node whose metrics port is
    taken). False when another live process holds it; True where flock is unavailable."""
    if port in _RESERVED:
        return True
    try:
        import fcntl
    except ImportError:
        return True
    import tempfile

    handle = open(Path(tempfile.gettempdir()) / f"facemask-port-{port}.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return False
    _RESERVED[port] = handle
    return True
