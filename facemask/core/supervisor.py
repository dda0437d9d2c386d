"""Keep a server running: start it, and start it again whenever it ends, with a backoff.

    python -m facemask.core.supervisor --log server.log -- mlflow server --port 5000 ...

cluster.yaml's head runs its MLflow server so: a container on a VM has no init system, and a
server that the kernel's OOM killer or a crash takes down would otherwise stay down until
someone logs in, while every trial's logging fails.

- The server runs in a process group of its own. When its leader ends, whatever it left (an
  MLflow server's uvicorn workers still holding the port) is killed with it before the next start.
- The wait before a start doubles from 1 s to at most 60 s while the server keeps failing, and
  starts over once a run has lasted 60 s.
- Its output and the supervisor's own lines (each start and end, with the exit status) are
  appended to `--log`.
- SIGTERM or SIGINT stops the server's group (SIGTERM, then SIGKILL after 20 s) and then itself.
- One supervisor per log: a second one (`ray up` run again) finds the log locked, says by
  whom, and exits 0, leaving the running server alone.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from time import monotonic

from facemask.core.lifecycle import stop_process_group

FIRST_WAIT_S, MAX_WAIT_S = 1.0, 60.0
HEALTHY_AFTER_S = 60.0  # a run this long resets the backoff


def supervise(command: list[str], log: Path, stop: threading.Event, first_wait_s: float = FIRST_WAIT_S) -> int:
    """Run `command` until `stop` is set, starting it again each time it ends; returns the starts."""
    wait, starts = first_wait_s, 0
    with open(log, "ab", buffering=0) as out:

        def say(text: str) -> None:
            out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [supervisor] {text}\n".encode())

        while not stop.is_set():
            began, starts = monotonic(), starts + 1
            try:
                server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:  # gone since the last start (an upgrade under way): wait, as for a crash
                say(f"could not start {command[0]}: {exc}; trying again in {wait:.1f} s")
                stop.wait(wait)
                wait = min(MAX_WAIT_S, wait * 2)
                continue
            say(f"started {command[0]} (pid {server.pid}, start {starts})")
            while server.poll() is None and not stop.wait(0.5):
                pass
            if stop.is_set():
                stop_process_group(server, grace_s=20.0)  # its leftovers too, even once the leader ended
                say(f"stopped {command[0]} (pid {server.pid})")
                break
            kill_group(server.pid)  # what its leader left behind, before another start
            lasted = monotonic() - began
            wait = first_wait_s if lasted >= HEALTHY_AFTER_S else wait
            say(f"{command[0]} ended with status {server.returncode} after {lasted:.0f} s; starting it in {wait:.1f} s")
            stop.wait(wait)
            wait = min(MAX_WAIT_S, wait * 2)
    return starts


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group whose leader has ended."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facemask.core.supervisor", description=__doc__.split("\n")[0])
    parser.add_argument("--log", type=Path, required=True, help="where the server's output and restarts go")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the server's command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the server's command after --")
    if shutil.which(command[0]) is None:
        parser.error(f"{command[0]}: no such program on PATH ({os.environ.get('PATH', '')})")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "ab") as held:
        os.chmod(args.log, 0o600)  # the server's log may hold what its users send it
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{args.log} is already a supervised server's log; that server is left running", file=sys.stderr)
            return 0
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        supervise(command, args.log, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
