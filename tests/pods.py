"""Pods on one machine: a Linux network namespace per pod on one bridge, each with its own
address and ports, and the Services' names in its own /etc/hosts.

What this gives a test that the loopback cluster cannot: every node binds the ports its
manifest names (two Serve proxies on 8000, the GCS on 6379), and a pod reaches another by the
Service name the manifest writes (`redis:6379`, `http://mlflow:5000`), so a manifest's strings
run unchanged. Needs root and `ip` (iproute2); `PodNetwork.unavailable()` says why not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

NETNS_ETC = Path("/etc/netns")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class PodNetwork:
    """A bridge `fmb<tag>` on 10.254.<n>.0/24 (this machine at .254) and one namespace per pod."""

    def __init__(self) -> None:
        self.tag = str(os.getpid() % 100000)
        self.subnet = f"10.254.{os.getpid() % 250}"
        self.bridge = f"fmb{self.tag}"
        self.pods: dict[str, str] = {}  # pod -> its address
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    @staticmethod
    def unavailable() -> str | None:
        """Why pods cannot be made here, or None."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("ip") is None:
            return "no `ip` command (iproute2)"
        probe = f"fmprobe{os.getpid() % 100000}"
        steps = [
            (["ip", "netns", "add", probe], "a network namespace"),
            (["ip", "link", "add", probe, "type", "bridge"], "a bridge"),
            (["ip", "link", "add", f"{probe}v", "type", "veth", "peer", "name", "eth0", "netns", probe], "a veth pair"),
        ]
        try:
            for argv, what in steps:
                made = subprocess.run(argv, capture_output=True, text=True)
                if made.returncode != 0:
                    return f"cannot create {what}: {made.stderr.strip()}"
            return None
        finally:
            for argv in (
                ["ip", "link", "del", f"{probe}v"],
                ["ip", "link", "del", probe],
                ["ip", "netns", "del", probe],
            ):
                subprocess.run(argv, capture_output=True)

    def namespace(self, pod: str) -> str:
        return f"fm{self.tag}{pod}"[:15]

    def add(self, pod: str) -> str:
        """A pod's namespace joined to the bridge; its address."""
        address = f"{self.subnet}.{len(self.pods) + 1}"
        ns, veth = self.namespace(pod), f"fmv{self.tag}{len(self.pods)}"
        ip("netns", "add", ns)
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("link", "set", veth, "master", self.bridge)
        ip("link", "set", veth, "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        # A route out, as a pod has: Ray finds a node's address from the route to the internet.
        ip("-n", ns, "route", "add", "default", "via", f"{self.subnet}.254")
        self.pods[pod] = address
        return address

    def name_services(self, services: dict[str, str]) -> None:
        """Make each Service name (-> the pod behind it) resolve in every pod, as cluster DNS would.
        `ip netns exec` mounts /etc/netns/<ns>/hosts over /etc/hosts, so call this before starting pods."""
        host = socket.gethostname()
        for pod, address in self.pods.items():
            lines = ["127.0.0.1 localhost", "::1 localhost", f"{address} {host}"]
            lines += [f"{self.pods[target]} {name}" for name, target in services.items()]
            folder = NETNS_ETC / self.namespace(pod)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text("\n".join(lines) + "\n")
            # No DNS server in a pod: a name that is no Service fails at once instead of timing out.
            (folder / "resolv.conf").write_text("nameserver 127.0.0.1\n")

    def command(self, pod: str, argv: list[str]) -> list[str]:
        """`argv` run inside `pod`'s namespace (ip execs it: the PID is the command's own)."""
        return ["ip", "netns", "exec", self.namespace(pod), *argv]

    def start(self, pod: str, argv: list[str], env: dict[str, str], log: Path, **kwargs) -> subprocess.Popen:
        """`argv` as a pod's process, in a process group of its own (stopped by the test, by PID)."""
        return subprocess.Popen(
            self.command(pod, argv),
            env=env,
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )

    def close(self) -> None:
        """Remove every namespace, link and hosts file made here (their processes must be gone)."""
        for index, pod in enumerate(self.pods):
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("link", "del", f"fmv{self.tag}{index}")
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", self.namespace(pod))
            shutil.rmtree(NETNS_ETC / self.namespace(pod), ignore_errors=True)
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("link", "del", self.bridge)
