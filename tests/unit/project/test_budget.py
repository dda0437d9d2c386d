"""The suite's own budgets (tests/budget.py), tried on a small inner pytest session: a test over
the per-test budget fails with its measured time unless marked, a run over the suite's budget
fails, and every test's wall and machine-CPU seconds are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _plugin_importable(monkeypatch):
    """The inner session runs in its own process from a temporary folder: it finds tests.budget here."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


# Each inner test sleeps 0.3 s: a deliberate measurement window, over a 0.2 s budget.
INNER = """
import time
import pytest

def test_slow():
    time.sleep(0.3)

@pytest.mark.over_budget(reason="the inner session's allowed exception")
def test_slow_but_marked():
    time.sleep(0.3)

def test_quick():
    pass
"""


def test_a_test_over_its_budget_fails_with_its_time_unless_marked(pytester):
    pytester.makepyfile(test_inner=INNER)
    times = pytester.path / "times.json"
    run = pytester.runpytest_subprocess("-p", "tests.budget", "--test-budget-s", "0.2", "--times-out", str(times))
    run.assert_outcomes(passed=2, failed=1)
    run.stdout.fnmatch_lines(["*over the per-test budget: setup and call took 0.3 s, the budget is 0.2 s*"])
    run.stdout.fnmatch_lines(["*the suite's time*", "*3 tests in*", "*ten slowest*"])
    written = json.loads(times.read_text())
    by_test = {t["test"].split("::")[1]: t for t in written["tests"]}
    assert by_test["test_slow"]["outcome"] == "failed" and by_test["test_slow_but_marked"]["outcome"] == "passed"
    assert by_test["test_slow"]["wall_s"] >= 0.3 and by_test["test_quick"]["wall_s"] < 0.3
    assert all("machine_cpu_s" in t for t in written["tests"]) and written["cores"] >= 1
    assert len((pytester.path / "times.jsonl").read_text().splitlines()) == 3  # a line as each test ended


def test_a_run_over_the_suites_budget_fails(pytester):
    pytester.makepyfile(test_inner=INNER)
    run = pytester.runpytest_subprocess("-p", "tests.budget", "--suite-budget-s", "0.1")
    assert run.ret == 1
    run.stdout.fnmatch_lines(["*FAILED: the suite took * s (* min), over its budget of 0.1 s*"])
    run.assert_outcomes(passed=3)


def test_without_budgets_nothing_fails_for_time(pytester):
    pytester.makepyfile(test_inner=INNER)
    pytester.runpytest_subprocess("-p", "tests.budget").assert_outcomes(passed=3)
