"""The lock that lets tests run side by side under pytest-xdist and a whole-machine test alone
(tests/machine_lock.py), held by real processes as the workers hold it."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.services import wait_until

ROOT = Path(__file__).resolve().parents[3]

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tests.machine_lock import machine_share
    alone, log, seconds = sys.argv[1] == "alone", Path(sys.argv[2]), float(sys.argv[3])
    with machine_share(alone=alone):
        with log.open("a") as out:
            out.write(f"start {sys.argv[4]} {time.monotonic()}\\n")
        time.sleep(seconds)  # the test's length: the window the lock must cover
        with log.open("a") as out:
            out.write(f"end {sys.argv[4]} {time.monotonic()}\\n")
    """
)


def holder(folder: Path, log: Path, mode: str, seconds: float, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, mode, str(log), str(seconds), name],
        cwd=ROOT,
        env={"FACEMASK_TEST_MACHINE_LOCK": str(folder), "PATH": "/usr/bin:/bin"},
    )


def spans(log: Path) -> dict[str, tuple[float, float]]:
    times: dict[str, dict[str, float]] = {}
    for line in log.read_text().splitlines():
        what, name, at = line.split()
        times.setdefault(name, {})[what] = float(at)
    return {name: (t["start"], t["end"]) for name, t in times.items()}


def turnstile_shut(folder: Path) -> bool:
    """Whether a whole-machine holder holds the turnstile (a shared try would block)."""
    with open(folder / "turnstile", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def started(log: Path, name: str) -> bool:
    return log.is_file() and f"start {name} " in log.read_text()


def test_shared_holders_overlap_and_a_whole_machine_holder_runs_alone_without_being_starved(tmp_path):
    log = tmp_path / "log"
    first = holder(tmp_path, log, "shared", 1.5, "a")
    wait_until(lambda: started(log, "a"), 30, "the first shared holder", proc=first)
    second = holder(tmp_path, log, "shared", 1.5, "b")
    wait_until(lambda: started(log, "b"), 30, "a second shared holder beside the first", proc=second)
    # A whole-machine holder queues; a shared one arriving after it must wait behind it.
    whole = holder(tmp_path, log, "alone", 1.0, "w")
    wait_until(lambda: turnstile_shut(tmp_path), 30, "the whole-machine holder at the turnstile", proc=whole)
    late = holder(tmp_path, log, "shared", 0.5, "c")
    for proc in (first, second, whole, late):
        assert proc.wait(timeout=60) == 0
    got = spans(log)
    assert got["a"][0] < got["b"][0] < got["a"][1], got  # side by side
    assert got["w"][0] >= max(got["a"][1], got["b"][1]), got  # alone: after both
    assert got["c"][0] >= got["w"][1], got  # not let in ahead of the waiting whole-machine holder


WINDOWED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tests import machine_lock
    log = Path(sys.argv[1])
    def note(what):
        with log.open("a") as out:
            out.write(f"{what} {time.monotonic()}\\n")
    machine_lock._SHARED = machine_lock.machine_share(alone=False)  # as the test protocol holds it
    machine_lock._SHARED.__enter__()
    note("start w-setup")
    deadline = time.monotonic() + 30  # the endpoint starting: the other worker's test gets in meanwhile
    while "start a " not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    note("end w-setup")
    with machine_lock._alone_window():
        note("start w")
        time.sleep(1.0)  # what the test measures: alone
        note("end w")
    assert machine_lock._SHARED is not None  # shared again for the teardown
    machine_lock._SHARED.__exit__(None, None, None)
    """
)


def test_a_windowed_whole_machine_test_shares_its_setup_and_is_alone_inside_its_window(tmp_path):
    log = tmp_path / "log"
    env = {"FACEMASK_TEST_MACHINE_LOCK": str(tmp_path), "PATH": "/usr/bin:/bin"}
    windowed = subprocess.Popen([sys.executable, "-c", WINDOWED, str(log)], cwd=ROOT, env=env)
    wait_until(lambda: started(log, "w-setup"), 30, "the windowed test's setup", proc=windowed)
    neighbour = holder(tmp_path, log, "shared", 2.5, "a")
    for proc in (windowed, neighbour):
        assert proc.wait(timeout=60) == 0
    got = spans(log)
    assert got["a"][0] < got["w-setup"][1], got  # the setup ran beside a shared test
    assert got["w"][0] >= got["a"][1], got  # the window waited for it to end


def test_without_a_lock_folder_nothing_is_taken(tmp_path, monkeypatch):
    from tests.machine_lock import machine_share

    monkeypatch.delenv("FACEMASK_TEST_MACHINE_LOCK", raising=False)
    with machine_share(alone=True), machine_share(alone=True):
        pass  # one process, no xdist: would deadlock if anything were taken
    assert not list(tmp_path.iterdir())


# Reads the xdist group each collected test ends in, after tests/conftest.py has assigned them.
GROUPS_PROBE = textwrap.dedent(
    """
    import json, os
    def pytest_collection_finish(session):
        groups = {}
        for item in session.items:
            marker = item.get_closest_marker("xdist_group")
            groups[item.nodeid] = marker.args[0] if marker else None
        with open(os.environ["GROUPS_OUT"], "w") as out:
            json.dump(groups, out)
    """
)


def test_heavy_tests_run_one_at_a_time_on_one_worker_and_whole_machine_ones_alone(tmp_path):
    """Every test of a heavy module lands in the one heavy group (one xdist worker, one test at a
    time), a module's shared services included; a whole-machine test keeps its own group, unless
    it uses its module's shared services: then it stays with them; a light test, and a
    whole-machine one that takes the machine alone only inside itself (`machine_alone`), stay free
    to go to either worker."""
    (tmp_path / "groups_probe.py").write_text(GROUPS_PROBE)
    out = tmp_path / "groups.json"
    heavy = ["tests/integration/training/test_tune.py", "tests/integration/deploy/test_cluster.py"]
    mixed, light = "tests/integration/serving/test_registry_lookups.py", "tests/integration/data/test_prepare.py"
    windowed = "tests/integration/serving/test_serve_command.py"  # whole-machine tests, each with its window
    shared = "tests/integration/serving/test_serve_faults.py"  # an endpoint per module, whole-machine tests
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "groups_probe", "-p", "no:cacheprovider"]
        + [*heavy, mixed, light, shared, windowed],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(tmp_path), "GROUPS_OUT": str(out)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    groups = json.loads(out.read_text())
    of = {
        path: {g for test, g in groups.items() if test.startswith(path)}
        for path in [*heavy, mixed, light, shared, windowed]
    }
    assert all(of[path] == {"heavy"} for path in heavy), of
    assert of[mixed] == {"whole-machine", "test_registry_lookups", None}, of  # alone, with its registry, free
    assert of[light] == of[windowed] == {None}, of
    assert of[shared] == {"test_serve_faults"}, of  # the module's name


SIDE_BY_SIDE = textwrap.dedent(
    """
    import os
    import pytest

    def ran(kind, i):
        with open(os.environ["SIDE_LOG"], "a") as log:
            log.write(f"{kind} {i} {os.environ['PYTEST_XDIST_WORKER']}\\n")

    @pytest.mark.heavy(reason="a stand-in")
    @pytest.mark.parametrize("i", range(4))
    def test_heavy(i):
        ran("heavy", i)

    @pytest.mark.parametrize("i", range(4))
    def test_light(i):
        ran("light", i)
    """
)


def test_the_groups_reach_xdists_scheduler(tmp_path):
    """Under `--dist loadgroup` on two workers, the heavy tests all run on one worker: the groups
    tests/conftest.py gives survive into the node ids xdist schedules by (pytest 9.2 built node
    ids that pytest-xdist 3.8 could not suffix, and every test went its own way)."""
    (tmp_path / "test_side_by_side.py").write_text(SIDE_BY_SIDE)
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "tests.conftest", "-q"]
        + ["-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path / "test_side_by_side.py")],
        cwd=ROOT, env={**os.environ, "SIDE_LOG": str(tmp_path / "ran.log")},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    workers: dict[str, set[str]] = {"heavy": set(), "light": set()}
    for line in (tmp_path / "ran.log").read_text().splitlines():
        kind, _, worker = line.split()
        workers[kind].add(worker)
    assert len(workers["heavy"]) == 1 and workers["light"], (workers, ran.stdout[-2000:])
