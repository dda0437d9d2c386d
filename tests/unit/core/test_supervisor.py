"""The supervisor that keeps cluster.yaml's MLflow server up (facemask/core/supervisor.py), on
real processes: a server that keeps failing, one that leaves a worker behind, one killed."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from facemask.core.lifecycle import _alive
from facemask.core.supervisor import main, supervise
from tests.services import wait_until


def test_a_failing_server_is_started_again_with_a_doubling_wait_and_its_leftovers_killed(tmp_path):
    log, pids = tmp_path / "server.log", tmp_path / "pids"
    # The "server" leaves a worker behind (as an MLflow server's uvicorn would) and fails.
    command = ["bash", "-c", f"sleep 300 & echo $! >> {pids}; echo failing; exit 3"]
    stop = threading.Event()
    done = []
    thread = threading.Thread(target=lambda: done.append(supervise(command, log, stop, first_wait_s=0.05)))
    thread.start()
    wait_until(lambda: log.exists() and log.read_text().count("ended with status 3") >= 4, 30, "four failures")
    stop.set()
    thread.join(30)
    text = log.read_text()
    assert done and done[0] >= 4 and text.count("failing") >= 4
    assert re.findall(r"starting it in ([\d.]+) s", text)[:3] == ["0.1", "0.1", "0.2"]  # 0.05, 0.1, 0.2
    assert all(not _alive(int(pid)) for pid in pids.read_text().split())  # no worker outlives its server


def test_the_wait_doubles_while_failing_and_starts_over_after_a_healthy_run(tmp_path, monkeypatch):
    import facemask.core.supervisor as supervisor

    waits: list[float] = []
    stop = threading.Event()

    class Clock(threading.Event):  # records each wait instead of sleeping it
        def wait(self, timeout=None):
            if timeout is not None and timeout >= 1:
                waits.append(timeout)
                if len(waits) == 8:
                    stop.set()
            return stop.is_set()

        def is_set(self):
            return stop.is_set()

    # Each run "lasts" 0 s, except the fifth, which lasts past HEALTHY_AFTER_S.
    ticks = itertools.chain([0] * 9, itertools.repeat(100))
    monkeypatch.setattr(supervisor, "monotonic", lambda: next(ticks))
    supervise(["true"], tmp_path / "log", Clock())
    assert waits[:4] == [1, 2, 4, 8] and waits[4] == 1  # the healthy fifth run reset it
    assert max(waits) <= supervisor.MAX_WAIT_S


def test_a_killed_server_comes_back_and_sigterm_stops_both(tmp_path):
    log = tmp_path / "logs" / "server.log"
    server = [sys.executable, "-c", "import time; print('serving', flush=True); time.sleep(300)"]
    proc = subprocess.Popen([sys.executable, "-m", "facemask.core.supervisor", "--log", str(log), "--", *server])
    try:

        def started() -> list[int]:
            return [int(p) for p in re.findall(r"started \S+ \(pid (\d+)", log.read_text())] if log.exists() else []

        first = wait_until(lambda: started(), 30, "the server started", proc)[0]
        os.kill(first, signal.SIGKILL)  # the OOM killer, say
        second = wait_until(lambda: started()[1:], 30, "the server started again", proc)[0]
        assert second != first and "ended with status -9" in log.read_text()
        # `ray up` again: a second supervisor of the same log leaves the running server alone.
        again = subprocess.run(
            [sys.executable, "-m", "facemask.core.supervisor", "--log", str(log), "--", *server],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 0 and "already a supervised server's log" in again.stderr
        assert _alive(second) and len(started()) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not _alive(second) and "stopped" in log.read_text()
        assert log.stat().st_mode & 0o077 == 0  # the log is its owner's alone
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_server_that_is_not_there_is_refused_at_once_naming_it(tmp_path, capsys):

    with pytest.raises(SystemExit) as exited:
        main(["--log", str(tmp_path / "server.log"), "--", "no-such-server-anywhere", "--port", "5000"])
    assert exited.value.code == 2 and "no-such-server-anywhere: no such program on PATH" in capsys.readouterr().err
