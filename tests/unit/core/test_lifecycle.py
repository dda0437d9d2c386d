"""facemask.core.lifecycle: a worker process that exits under a running training thread leaves
at once, without the interpreter teardown that can abort it; one whose thread has ended exits as usual."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# A stand-in for a Ray worker: its own teardown registered first (as Ray's is, at connect), then a
# training thread that asks for the guard, then SIGTERM's effect on a Ray worker: SystemExit(1).
WORKER = textwrap.dedent(
    """
    import atexit, sys, threading
    from facemask.core.lifecycle import quick_exit_while_this_thread_runs

    atexit.register(lambda: print("worker teardown ran", flush=True))
    started, finish = threading.Event(), threading.Event()

    def training():
        quick_exit_while_this_thread_runs()
        started.set()
        finish.wait()  # the epoch still under way

    thread = threading.Thread(target=training, daemon=True)
    thread.start()
    started.wait()
    if sys.argv[1] == "finished":
        finish.set()
        thread.join()
    print("exiting", flush=True)
    sys.exit(1)
    """
)


@pytest.mark.parametrize("training", ["running", "finished"])
def test_a_worker_exiting_under_its_training_thread_leaves_at_once(training):
    done = subprocess.run([sys.executable, "-c", WORKER, training], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "exiting" in done.stdout  # what was printed before the exit is flushed, not lost
    # Running: the teardown is skipped (it is what aborts under torch); finished: everything runs as usual.
    assert ("worker teardown ran" in done.stdout) == (training == "finished"), done.stdout


def test_a_group_whose_leader_has_ended_is_still_stopped():
    """A server's leader that ended and left a worker behind (holding its port): the worker is
    stopped with the group, not left running."""
    import os
    import signal

    from facemask.core.lifecycle import group_members, stop_process_group

    # The leader starts a worker that ignores nothing, prints its PID, and exits at once.
    leader = subprocess.Popen(
        ["bash", "-c", "sleep 300 & echo $!"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    worker = int(leader.stdout.readline())
    leader.wait(timeout=10)
    try:
        assert group_members(leader.pid) == [worker]
        stop_process_group(leader, grace_s=5)
        assert group_members(leader.pid) == []
    finally:
        if group_members(leader.pid):
            os.killpg(leader.pid, signal.SIGKILL)


# A command's stop handlers, then a fit that puts in a Ctrl-C handler of its own and leaves it (as
# Ray Tune's does when nothing stopped it), then SIGTERM while the study registers its best trial.
AFTER_A_FIT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from facemask.core.lifecycle import ctrl_c_handler_kept, handle_stop_signals

    handle_stop_signals()
    event = threading.Event()
    def fit():
        signal.signal(signal.SIGINT, lambda signum, frame: event.set())  # Tune's: end the run, set an event
    if sys.argv[1] == "kept":
        with ctrl_c_handler_kept():
            fit()
    else:
        fit()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(3)
        print("the stop was swallowed", flush=True)
    except KeyboardInterrupt:
        print("stopped", flush=True)
    """
)


@pytest.mark.parametrize("handlers, expected", [("kept", "stopped"), ("left to the fit", "the stop was swallowed")])
def test_a_stop_after_a_fit_stops_the_command_once_the_handler_is_kept(handlers, expected):
    ran = subprocess.run([sys.executable, "-c", AFTER_A_FIT, handlers], capture_output=True, text=True, timeout=60)
    assert ran.stdout.strip() == expected, ran.stdout + ran.stderr[-2000:]
