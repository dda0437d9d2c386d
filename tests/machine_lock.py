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
whole-machine test holds, so a stream of shared tests can never starve it. Without xdist (one
process) nothing is taken.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
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


def alone(item: pytest.Item | None) -> bool:
    return item is not None and item.get_closest_marker("whole_machine") is not None


def heavy(item: pytest.Item) -> bool:
    return item.get_closest_marker("heavy") is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Setup to teardown under the machine lock: a module's shared services start in its first
    test's setup and stop in its last test's teardown, so they are inside it too. The whole-machine
    tests are one xdist group (tests/conftest.py), run one after the other on one worker: the
    exclusive hold passes from one to the next rather than letting a long shared test in between.
    Those of a module with shared services run on that module's worker, alone all the same."""
    global _HELD
    if not alone(item):
        with machine_share(alone=False):
            return (yield)
    if _HELD is None:
        _HELD = machine_share(alone=True)
        _HELD.__enter__()
    try:
        return (yield)
    finally:
        if not alone(nextitem):
            held, _HELD = _HELD, None
            held.__exit__(None, None, None)
