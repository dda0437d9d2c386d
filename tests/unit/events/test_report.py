"""`facemask report` from a watch's files: per day and per week, compliance weighted by people,
events by state, a torn line counted and skipped; the CSV and a self-contained HTML."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

DAY1 = datetime(2026, 11, 30, 9, tzinfo=timezone.utc).timestamp()  # a Monday
DAY2 = datetime(2026, 12, 1, 9, tzinfo=timezone.utc).timestamp()
DAY8 = datetime(2026, 12, 7, 9, tzinfo=timezone.utc).timestamp()  # the next week


def window(camera: str, start: float, with_mask: int, without: int, incorrect: int = 0) -> dict:
    people = with_mask + without + incorrect
    counts = {"with_mask": with_mask, "without_mask": without, "mask_weared_incorrect": incorrect}
    return {"camera": camera, "start": start, "end": start + 60, "people": people, "by_class": counts,
            "compliance": with_mask / people if people else None}  # fmt: skip


def event(camera: str, start: float, state: str, kind: str, duration: float | None = None) -> dict:
    return {"key": f"{camera}-{start}:{kind}", "event": f"{camera}-{start}", "kind": kind, "camera": camera,
            "state": state, "start": start, "duration_s": duration}  # fmt: skip


def watch_output(folder: Path) -> Path:
    rows = [
        window("door", DAY1, 8, 2),
        window("door", DAY1 + 60, 1, 1),  # the day's worst window: 50%
        window("hall", DAY1, 5, 0),
        window("door", DAY2, 3, 0, 1),
        window("door", DAY8, 0, 0),  # nobody: no share
        window("hall", DAY8, 2, 2),
    ]
    folder.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (folder / "compliance.jsonl").write_text(text + '{"camera": "door", "start": 17')  # torn by a power cut
    events = [
        event("door", DAY1 + 5, "without_mask", "start"),
        event("door", DAY1 + 5, "without_mask", "end", 12.0),
        event("door", DAY1 + 70, "without_mask", "start"),
        event("door", DAY1 + 70, "without_mask", "end", 30.0),
        event("door", DAY2 + 5, "mask_weared_incorrect", "start"),
    ]
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return folder


def report(folder: Path, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "facemask.cli", "report", str(folder), "--utc", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_daily_report_weights_compliance_by_people_and_counts_events_and_skips(tmp_path):
    out = watch_output(tmp_path / "audit")
    run = report(out, "--to", str(tmp_path / "report"))
    assert run.returncode == 0, run.stderr
    assert "1 lines of compliance.jsonl were not rows and were skipped" in run.stderr
    rows = {(r["period"], r["camera"]): r for r in csv.DictReader(open(tmp_path / "report" / "report.csv"))}
    door = rows[("2026-11-30", "door")]
    assert (door["windows"], door["people"], door["with_mask"]) == ("2", "12", "9")
    assert float(door["compliance"]) == 0.75 and float(door["lowest"]) == 0.5  # 9/12, not the mean of 80% and 50%
    assert (door["events"], door["events_without_mask"], door["median_event_s"]) == ("2", "2", "21.0")
    assert rows[("2026-12-01", "door")]["events_mask_weared_incorrect"] == "1"
    assert rows[("2026-12-07", "door")]["compliance"] == ""  # nobody seen: no share, not 0% or 100%
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "75%" in page and "skipped" in page


def test_the_weekly_report_and_the_date_range(tmp_path):
    out = watch_output(tmp_path / "audit")
    run = report(out, "--period", "week", "--json")
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    weeks = {(r["period"], r["camera"]): r for r in answer["rows"]}
    assert set(weeks) == {("2026-W49", "door"), ("2026-W49", "hall"), ("2026-W50", "door"), ("2026-W50", "hall")}
    assert weeks[("2026-W49", "door")]["people"] == 16 and weeks[("2026-W49", "door")]["events"] == 3
    assert answer["skipped"] == {"compliance.jsonl": 1}
    only = json.loads(report(out, "--since", "2026-12-01", "--until", "2026-12-01", "--json").stdout)["rows"]
    assert [(r["period"], r["camera"]) for r in only] == [("2026-12-01", "door")]


def test_a_folder_without_a_compliance_log_is_refused_with_the_fix(tmp_path):
    run = report(tmp_path)
    assert run.returncode == 2 and "no compliance log" in run.stderr and "facemask watch --out" in run.stderr
