"""Tests side by side, and the tests that must have the machine to themselves (a pytest plugin,
loaded by tests/conftest.py).

Under pytest-xdist (`make test` runs two workers) two tests run at once. Most only wait longer
when they share the cores. A test that measures time or load against a bound (a replica back
within seconds, an autoscaler that reacts to a load, a burst that must outrun the model) would
measure its neighbour instead: `@pytest.mark.whole_machine(reason=...)` runs it alone. A test that
trains a study or starts a cluster of several nodes keeps both cores busy by itself: two of them
at once overload a 2-core machine (a raylet then misses Ray's fixed 30 s to register), so
`@pytest.mark.heavy(reason=...)` puts them in one xdist group, one after another on one worker,
beside the other worker's lighter tests (tests/conftest.py).

One lock across the workers, a readers-writer lock of two files under a folder the controller
names: every test holds the machine lock shared from its setup to its teardown, a whole-machine
test holds it exclusive. Before either, a test passes through a turnstile that a waiting
whole-machine test holds, so a stream of shared tests can never starve it. A whole-machine test
whose own setup and teardown are long (an endpoint started and stopped) holds it exclusive only
around what it measures (`machine_alone`), so those seconds run beside the other worker's tests.
Without xdist (one process) nothing is taken.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

_ENV = "FACEMASK_TEST_MACHINE_LOCK"
_OWNED = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "whole_machine(reason): under pytest-xdist the test runs alone; the reason says what it measures "
        "that a neighbour would disturb",
    )
    config.addinivalue_line(
        "markers",
        "heavy(reason): under pytest-xdist the test runs on the heavy tests' worker, one at a time; the reason "
        "says what keeps the cores busy",
    )
    # The controller names the folder before its workers start; they inherit the environment.
    if not hasattr(config, "workerinput") and config.getoption("numprocesses", default=None):
        folder = tempfile.mkdtemp(prefix="facemask-machine-lock-")
        os.environ[_ENV] = folder
        config.stash[_OWNED] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_OWNED, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(_ENV, None)


@contextmanager
def _locked(path: Path, mode: int):
    with open(path, "a+") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def machine_share(alone: bool):
    """Hold the machine shared (most tests) or alone (`alone`), across pytest-xdist's workers."""
    folder = os.environ.get(_ENV)
    if not folder or not hasattr(fcntl, "flock"):
        yield
        return
    turnstile, machine = Path(folder) / "turnstile", Path(folder) / "machine"
    if alone:
        # The turnstile stays shut for the test's whole length; the machine lock waits for the
        # neighbour's test to end.
        with _locked(turnstile, fcntl.LOCK_EX), _locked(machine, fcntl.LOCK_EX):
            yield
        return
    with ExitStack() as held:
        with _locked(turnstile, fcntl.LOCK_SH):  # past the turnstile, which is let go at once
            held.enter_context(_locked(machine, fcntl.LOCK_SH))
        yield


WHOLE_MACHINE_GROUP = "whole-machine"
HEAVY_GROUP = "heavy"
_HELD = None  # the exclusive hold kept from one whole-machine test to the next
_SHARED = None  # this worker's shared hold on the machine while a test runs
_WAITED_S = 0.0  # how long the running test waited inside itself for the machine alone


def waited_s() -> float:
    """Seconds the running test has waited for the machine alone inside its call (`machine_alone`)."""
    return _WAITED_S


def alone(item: pytest.Item | None) -> bool:
    """A whole-machine test that holds the machine alone from its setup to its teardown."""
    return item is not None and item.get_closest_marker("whole_machine") is not None and not windowed(item)


def windowed(item: pytest.Item) -> bool:
    """A whole-machine test that takes the machine alone only around what it measures (`machine_alone`)."""
    return item.get_closest_marker("whole_machine") is not None and "machine_alone" in item.fixturenames


@contextmanager
def _alone_window():
    """Trade this worker's shared hold for the machine alone, and back."""
    global _SHARED, _WAITED_S
    held, _SHARED = _SHARED, None
    if held is not None:
        held.__exit__(None, None, None)
    asked = time.monotonic()
    try:
        with machine_share(alone=True):
            _WAITED_S += time.monotonic() - asked
            yield
    finally:
        if held is not None:
            _SHARED = machine_share(alone=False)
            _SHARED.__enter__()


@pytest.fixture
def machine_alone():
    """For a whole-machine test whose setup and teardown need no quiet (an endpoint started and
    stopped, seconds each): it holds the machine shared like any other test, and `with
    machine_alone():` has it alone around what it measures. Fails the test that never takes it."""
    taken = []

    @contextmanager
    def window():
        taken.append(True)
        with _alone_window():
            yield

    yield window
    assert taken, "a whole-machine test asked for machine_alone and never took the machine alone"


def heavy(item: pytest.Item) -> bool:
    return item.get_closest_marker("heavy") is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Setup to teardown under the machine lock: a module's shared services start in its first
    test's setup and stop in its last test's teardown, so they are inside it too. The whole-machine
    tests are one xdist group (tests/conftest.py), run one after the other on one worker: the
    exclusive hold passes from one to the next rather than letting a long shared test in between.
    Those of a module with shared services run on that module's worker, alone all the same. A
    whole-machine test that uses `machine_alone` runs as a shared one, and alone inside it."""
    global _HELD, _SHARED, _WAITED_S
    _WAITED_S = 0.0
    if not alone(item):
        _SHARED = machine_share(alone=False)
        _SHARED.__enter__()
        try:
            return (yield)
        finally:
            held, _SHARED = _SHARED, None
            if held is not None:
                held.__exit__(None, None, None)
    if _HELD is None:
        _HELD = machine_share(alone=True)
        _HELD.__enter__()
    try:
        return (yield)
    finally:
        if not alone(nextitem):
            held, _HELD = _HELD, None
            held.__exit__(None, None, None)
