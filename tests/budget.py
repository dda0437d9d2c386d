"""The suite's time, measured and held to a budget (a pytest plugin, loaded by tests/conftest.py).

Each test's wall time (setup, call and teardown) and the CPU the whole machine spent meanwhile
(from /proc/stat, so Ray's, MLflow's and every other process's work counts, not only pytest's)
are recorded. The end of the run prints the suite's total and the ten slowest tests, and with
`--times-out FILE` writes every test's figures as JSON (and, as each test ends, a line of
FILE + "l": JSON lines to follow a run with).

Two budgets, off unless given (`.ci/run` gives both):
- `--test-budget-s S`: a test whose setup and call take longer fails with its measured time,
  unless it carries `@pytest.mark.over_budget(reason=...)`;
- `--suite-budget-s S`: the run fails when the tests, from the session's start to its end, take
  longer.

Under pytest-xdist the workers measure and the controller sums up; the machine's CPU is then
shared by the tests running side by side, so a test's CPU figure is the machine's over its span.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from facemask.core.runtime import machine_busy_s
from tests import machine_lock

_START = pytest.StashKey[tuple[float, float]]()
_SETUP_S = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("facemask budget")
    group.addoption("--test-budget-s", type=float, default=0.0, help="fail a test whose setup+call exceed S seconds")
    group.addoption("--suite-budget-s", type=float, default=0.0, help="fail the run when the tests exceed S seconds")
    group.addoption("--times-out", default=None, help="write every test's wall and machine CPU seconds here (JSON)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "over_budget(reason): the test may take longer than --test-budget-s; the reason says why it cannot be shorter",
    )
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) sums up
        config.pluginmanager.register(SuiteTimes(config), "facemask-suite-times")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_START] = (time.monotonic(), machine_busy_s())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    if call.when == "setup":
        item.stash[_SETUP_S] = call.duration
    elif call.when == "teardown" and _START in item.stash:
        started, busy = item.stash[_START]
        wall = time.monotonic() - started
        item.user_properties += [("wall_s", round(wall, 2)), ("machine_cpu_s", round(machine_busy_s() - busy, 2))]
    report = yield
    budget = item.config.getoption("test_budget_s")
    if call.when == "call" and report.passed and budget > 0 and item.get_closest_marker("over_budget") is None:
        # Not the wait for the machine alone inside the test (`machine_alone`): before setup, the wait
        # for the machine lock is no test's time either.
        spent = item.stash.get(_SETUP_S, 0.0) + call.duration - machine_lock.waited_s()
        if spent > budget:
            report.outcome = "failed"
            report.longrepr = (
                f"over the per-test budget: setup and call took {spent:.1f} s, the budget is {budget:g} s. "
                "Make it shorter (share a fixture, shorten a wait through the product's settings), or mark it "
                "@pytest.mark.over_budget(reason=...) saying why it cannot be."
            )
    return report


class SuiteTimes:
    """On the controller: every test's figures, the total, the ten slowest, the suite's budget."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.tests: dict[str, dict] = {}
        self.started = time.monotonic()
        self.busy_at_start = machine_busy_s()
        self.over_budget: str | None = None
        self.total: dict | None = None  # the session's figures, taken once as it finishes

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.tests.setdefault(report.nodeid, {"test": report.nodeid, "outcome": "passed"})
        entry[f"{report.when}_s"] = round(report.duration, 2)
        if report.failed or (report.skipped and report.when != "teardown"):
            entry["outcome"] = report.outcome
        entry.update({key: value for key, value in report.user_properties if key in ("wall_s", "machine_cpu_s")})
        out = self.config.getoption("times_out")
        if out and report.when == "teardown":  # as each test ends, so a run can be followed (tail -f)
            with open(f"{out}l", "a") as lines:
                lines.write(json.dumps(entry) + "\n")

    def summary(self) -> dict:
        return {
            "wall_s": time.monotonic() - self.started,
            "machine_cpu_s": machine_busy_s() - self.busy_at_start,
            "cores": os.cpu_count(),
            "tests": len(self.tests),
        }

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Before the terminal's own sessionfinish, which prints the summary below: one reading serves both.
        self.total = total = self.summary()
        budget, wall = self.config.getoption("suite_budget_s"), total["wall_s"]
        if budget > 0 and wall > budget:
            self.over_budget = f"the suite took {wall:.0f} s ({wall / 60:.1f} min), over its budget of {budget:g} s"
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        out = self.config.getoption("times_out")
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            tests = sorted(self.tests.values(), key=lambda t: -t.get("wall_s", 0.0))
            rounded = {key: round(value, 1) if isinstance(value, float) else value for key, value in total.items()}
            Path(out).write_text(json.dumps({**rounded, "tests": tests}, indent=1))

    def pytest_terminal_summary(self, terminalreporter) -> None:
        total = self.total or self.summary()
        if not self.tests:
            return
        write = terminalreporter.write_line
        terminalreporter.section("the suite's time")
        share = total["machine_cpu_s"] / max(total["wall_s"] * (total["cores"] or 1), 1e-9)
        write(
            f"{total['tests']} tests in {total['wall_s'] / 60:.1f} min; the machine was busy "
            f"{total['machine_cpu_s'] / 60:.1f} CPU-min, {share:.0%} of its {total['cores']} cores"
        )
        write(f"{'wall s':>8} {'CPU s':>8} {'cores':>6}  ten slowest (setup+call+teardown; CPU: the whole machine's)")
        for entry in sorted(self.tests.values(), key=lambda t: -t.get("wall_s", 0.0))[:10]:
            wall, cpu = entry.get("wall_s", 0.0), entry.get("machine_cpu_s", 0.0)
            # /proc/stat counts in ticks (10 ms): over a span shorter than a few, a ratio means nothing.
            cores = f"{cpu / wall:6.2f}" if wall >= 0.1 else f"{'-':>6}"
            write(f"{wall:8.1f} {cpu:8.1f} {cores}  {entry['test']}")
        if self.over_budget:
            terminalreporter.write_line(f"FAILED: {self.over_budget}", red=True, bold=True)
