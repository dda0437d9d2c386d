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
    for child, fields in _process_stats():
        parents.setdefault(int(fields[1]), []).append(child)
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
    with its workers), wait up to `grace_s` for the whole group, then SIGKILL what is left. A
    group whose leader has already ended is stopped too: what it started (an MLflow server's
    workers, still holding its port) outlives it."""
    import subprocess

    deadline = time.monotonic() + grace_s
    if proc.poll() is None or group_members(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None or group_members(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def group_members(pgid: int) -> list[int]:
    """The live processes whose process group and session are both `pgid` (what a leader started
    with start_new_session=True left, even after it ended: while any of them lives, Linux gives
    that number to no new process), read from /proc; empty elsewhere."""
    return [pid for pid, f in _process_stats() if f[0] != "Z" and int(f[2]) == pgid and int(f[3]) == pgid]


def _process_stats():
    """(pid, the fields of /proc/PID/stat after the command's name: state, ppid, pgrp, session, ...)
    for every process; none where there is no /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            yield int(stat.parent.name), stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone while reading


def process_name(pid: int) -> str:
    """The kernel's name of `pid` (its first 15 characters), "" when it has gone or where there is no /proc."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


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


_guarded_threads: list = []  # the training threads quick_exit_while_this_thread_runs was called on


def quick_exit_while_this_thread_runs() -> None:
    """For a training thread inside a Ray worker (a Tune trial, a Ray Train rank): should the
    process exit while this thread still runs (Ray ending its workers after a stopped study
    sends SIGTERM, which exits the main thread), leave at once with os._exit instead of
    tearing the interpreter down under it. That teardown, with torch still computing on this
    thread, can abort the worker with a "Fatal Python error: Aborted" stack in the command's
    output; the trial's state was saved at its last report, so nothing is lost by not waiting."""
    import atexit
    import threading

    thread = threading.current_thread()
    if thread is threading.main_thread():
        return
    if not _guarded_threads:
        atexit.register(_leave_if_training)  # atexit runs last-registered first: before Ray's own teardown
    _guarded_threads[:] = [t for t in _guarded_threads if t.is_alive()] + [thread]


def _leave_if_training() -> None:
    if any(t.is_alive() for t in _guarded_threads):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(1)  # the status Ray's own SIGTERM handler exits a worker with


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


@contextlib.contextmanager
def ctrl_c_handler_kept():
    """The Ctrl-C handler in place now is in place again afterwards, whatever ran inside.

    Ray Tune's fit puts in a handler of its own, which ends the study at a stop and only then puts
    back the one it found; after a fit that was not stopped it stays, and a Ctrl-C or SIGTERM
    while the study registers and scores its best trial only set an event nothing waited on.
    Only the main thread can set handlers; elsewhere this does nothing."""
    import threading

    kept = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    finally:
        if kept is not None:
            signal.signal(signal.SIGINT, kept)
