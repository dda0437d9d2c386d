"""monitoring/alerts.yml as Prometheus runs it: promtool checks the rules and runs their unit
tests (monitoring/alerts_test.yml), and every metric the rules read is one the code exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "monitoring"
PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian's prometheus; .ci/run installs it)")
def test_promtool_accepts_the_rules_and_each_alert_fires_when_it_should():
    for args in (
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "prometheus.yml"],
    ):
        run = subprocess.run([PROMTOOL, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (args, run.stdout + run.stderr)


def test_every_metric_an_alert_reads_is_exported_by_the_code_and_every_alert_is_tested():
    rules = [r for group in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for r in group["rules"]]
    source = "\n".join(p.read_text() for p in (ROOT / "facemask").rglob("*.py"))
    for rule in rules:
        for metric in re.findall(r"\bray_(facemask_[a-z_]+)", rule["expr"]):
            assert f'"{metric}"' in source, f"{rule['alert']} reads ray_{metric}, which no code exports"
    tested = {
        t["alertname"]
        for case in yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
        for t in case["alert_rule_test"]
    }
    assert tested == {r["alert"] for r in rules}
