"""The life of a long command: the stop signals and the exit status they give, a stop that
overruns its deadline, and the processes below this one (found, ended, or made to die with it).

A leaf, like runtime: the CLI, `jobs/*` and tests call it; nothing here runs at import.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable


def descendants(pid: int | None = None) -> set[int]:
    """The PIDs of every process below `pid` (default: this one), read from /proc; empty elsewhere."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone while reading
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid or os.getpid()]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def end_processes(pids: set[int], grace_s: float = 5.0) -> list[int]:
    """SIGTERM, then after `grace_s` SIGKILL, those of `pids` still alive: processes this command
    started that outlived their parent (a HAProxy that Serve restarted is not stopped with
    Serve). Returns the PIDs that had to be ended."""
    import time

    alive = [p for p in pids if _alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in alive):
        time.sleep(0.2)
    for pid in alive:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return alive


def stop_process_group(proc, sig: int = signal.SIGTERM, grace_s: float = 30.0) -> None:
    """Send `sig` to the process group `proc` leads (started with start_new_session=True: a server
    with its workers), wait up to `grace_s` for it, then SIGKILL the group."""
    import subprocess

    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def die_with_parent() -> None:
    """For `subprocess.Popen(preexec_fn=...)`: the child gets SIGTERM when this process dies,
    even by SIGKILL (what `ray job stop` sends after its grace period), so a helper server
    never outlives the command that started it. Linux only; elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# The signals that stop a command, and the exit status each ends it with (128 + the signal).
STOP_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143}
_stop_received: list[int] = []


def stop_signal() -> int | None:
    """The stop signal this process received (SIGINT or SIGTERM), or None."""
    return _stop_received[-1] if _stop_received else None


def stopped_meanwhile(grace_s: float = 1.0) -> bool:
    """Whether a stop signal has come, or comes within `grace_s`: for an error that may be the
    stop's doing. A signal to every process (systemd's control-group kill) also ends Ray's workers, and their deaths
    can reach this process as an error just before its own signal does."""
    deadline = time.monotonic() + grace_s
    try:
        while stop_signal() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    except KeyboardInterrupt:  # the signal itself, arriving during the wait
        pass
    return stop_signal() is not None


def stop_exit_code() -> int:
    """The exit status of a stopped command: 143 after SIGTERM, else 130 (Ctrl-C)."""
    return STOP_SIGNALS.get(stop_signal() or signal.SIGINT, 130)


# A stopped command that is still alive this long after the signal is ended by force. When
# the signal reaches every process (systemd's control-group kill), the local Ray this process
# started dies at once, and Ray's own shutdown (Tune's, Serve's) can wait on it for ever.
STOP_DEADLINE_S = 25.0
_forced_stop_actions: list = []
_started_processes: set[int] = set()  # below this process when the first stop signal came


def at_forced_stop(action: Callable[[], str | None]) -> Callable[[], None]:
    """Run `action()` if a stop overruns STOP_DEADLINE_S (or the local Ray died), just before
    the process exits by force. It may return what was stopped and how to go on, for the one
    line printed then (the most recently registered wins). Returns a function that unregisters it."""
    _forced_stop_actions.append(action)
    return lambda: _forced_stop_actions.remove(action) if action in _forced_stop_actions else None


def note_processes() -> set[int]:
    """Note the processes below this one that are alive now, and forget noted ones that ended;
    returns all noted. A long-running command calls it as it runs: a stop signal sent to every
    process (systemd's control-group kill) kills its local Ray before this process can look, and
    what Ray started (Serve's HAProxy) is re-parented away from this tree, out of sight."""
    alive = {pid for pid in _started_processes if _alive(pid)}
    _started_processes.clear()
    _started_processes.update(alive | descendants())
    return set(_started_processes)


def _local_ray_gone() -> bool:
    """True when this process started a local Ray and its raylet or GCS has died (a stop signal
    sent to every process, as systemd's control-group kill does, reaches them too); then
    nothing Ray does will finish."""
    if "ray" not in sys.modules:  # no Ray in this process: none was started here
        return False
    try:
        from facemask.compat.ray import local_core_died

        return local_core_died()
    except Exception:  # Ray's internals moved: fall back on the deadline alone
        return False


def _force_exit_after(deadline_s: float) -> None:
    import threading
    import time

    def watch() -> None:
        ends = time.monotonic() + deadline_s
        while time.monotonic() < ends and not _local_ray_gone():
            # Noted as they appear: a process started during the stop (Serve restarting a HAProxy
            # the signal ended) is re-parented away from this tree once its parent dies.
            _started_processes.update(descendants())
            time.sleep(0.2)
        message = None
        for action in reversed(list(_forced_stop_actions)):  # the most recent, most specific, first
            try:
                said = action()
                message = message or said
            except Exception as exc:  # a last-resort cleanup: report it, never hang on it
                print(f"warning: cleanup after a stop failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        # A process that has left the tree since (a child re-parented when its parent died) is still ours.
        end_processes(_started_processes | descendants(), grace_s=2.0)
        name = signal.Signals(stop_signal() or signal.SIGINT).name
        why = "its local Ray was stopped with it" if time.monotonic() < ends else f"shut-down overran {deadline_s:.0f}s"
        print(f"stopped by {name}: {message or 'the command'} ({why})", file=sys.stderr, flush=True)
        os._exit(stop_exit_code())

    threading.Thread(target=watch, name="facemask-stop-deadline", daemon=True).start()


def stopped_by(signum: int) -> None:
    """Record a stop signal; the first one notes the processes this one started, and starts the deadline."""
    if not _stop_received:
        _started_processes.update(descendants())
        _force_exit_after(STOP_DEADLINE_S)
    _stop_received.append(signum)


def _on_stop_signal(signum: int, frame) -> None:
    stopped_by(signum)
    interrupt = signal.getsignal(signal.SIGINT)
    if (
        signum == signal.SIGTERM
        and callable(interrupt)
        and interrupt not in (signal.default_int_handler, _on_stop_signal)
    ):
        # A graceful Ctrl-C handler is in place (Ray Tune's ends the study and saves its state):
        # SIGTERM from `ray job stop`, Kubernetes or systemd gets the same treatment.
        interrupt(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


def handle_stop_signals() -> None:
    """Make SIGTERM stop this process as Ctrl-C does: a KeyboardInterrupt in the main thread,
    so runs end KILLED, services stop and state is saved, instead of dying where it stands.

    Called by the CLI when a command starts and again after `ray.init()`, whose own SIGTERM
    handler calls `sys.exit` in the middle of whatever runs (under Tune that aborted the
    process). Only the main thread can set handlers; elsewhere this does nothing.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _on_stop_signal)
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _on_stop_signal):
        signal.signal(signal.SIGINT, _on_stop_signal)
