"""The ports a command's servers take (facemask.core.ports)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from facemask.core.ports import free_port


def test_a_documented_port_chosen_by_a_running_command_is_not_chosen_again_until_it_exits():
    """`free_port(preferred)` reserves the port machine-wide: a second process that finds it free
    (nothing has bound it yet) still takes another, until the first one exits."""
    port = free_port()  # a port nobody uses, standing in for 8080
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from facemask.core.ports import free_port; print(free_port({port}), flush=True); "
         "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == str(port)  # chosen, not bound: only reserved
        assert free_port(port) != port
    finally:
        holder.communicate("", timeout=30)
    assert free_port(port) == port  # the reservation ended with its process


def test_a_free_port_is_never_one_an_outgoing_connection_could_take_meanwhile():
    """Below the kernel's ephemeral range (where every outgoing connection takes its local port)
    and above Ray's worker ports; a port something listens on is never given."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    chosen = {free_port() for _ in range(20)}
    assert all(20000 <= port < low for port in chosen), (sorted(chosen), low)
    import socket

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", min(chosen)))
        listening.listen()
        assert free_port(min(chosen)) != min(chosen)
