"""`facemask report`: a daily or weekly compliance report per camera, from what a watch wrote.

Reads OUT/compliance.jsonl (one row per camera per window) and OUT/events.jsonl (every event's
start and end), and writes report.csv (one row per period and camera) and report.html (the
same table with two charts, self-contained: it can be mailed or archived as one file).

`people` sums each window's people: a person seen in three windows counts three times, so it
measures exposure (person-windows), not heads. `compliance` is with_mask / people over the
period's windows, weighted by people; `lowest` is the worst single window's. Periods are days
or ISO weeks (starting Monday) in the machine's local time, or UTC with `utc=True`.
A line that is not a row (a torn last line after a power cut, a hand edit) is skipped, counted
and reported; nothing valid is dropped.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import InputNotFoundError

COLUMNS = ["period", "camera", "windows", "people", *CLASS_NAMES, "compliance", "lowest", "events"]
COLUMNS += [f"events_{state}" for state in CLASS_NAMES[1:]] + ["median_event_s"]


@dataclass
class Cell:
    windows: int = 0
    people: int = 0
    by_class: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASS_NAMES, 0))
    lowest: float | None = None
    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASS_NAMES[1:], 0))
    durations: list[float] = field(default_factory=list)

    def row(self, period: str, camera: str) -> dict:
        share = self.by_class["with_mask"] / self.people if self.people else None
        return {
            "period": period,
            "camera": camera,
            "windows": self.windows,
            "people": self.people,
            **self.by_class,
            "compliance": None if share is None else round(share, 4),
            "lowest": None if self.lowest is None else round(self.lowest, 4),
            "events": sum(self.events.values()),
            **{f"events_{s}": n for s, n in self.events.items()},
            "median_event_s": round(statistics.median(self.durations), 1) if self.durations else None,
        }


@dataclass
class Report:
    rows: list[dict]
    skipped: dict[str, int]  # file name -> lines that were not rows
    period: str

    def write(self, folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"csv": folder / "report.csv", "html": folder / "report.html"}
        with open(paths["csv"], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        paths["html"].write_text(render_html(self))
        return paths


def build_report(
    out: Path, period: str = "day", since: date | None = None, until: date | None = None, utc: bool = False
) -> Report:
    """The report of the watch output folder `out`, for `since` <= day <= `until` (inclusive)."""
    rows_file, events_file = out / "compliance.jsonl", out / "events.jsonl"
    if not rows_file.is_file():
        raise InputNotFoundError(f"{rows_file}: no compliance log; give the folder passed to `facemask watch --out`")
    zone = timezone.utc if utc else None
    cells: dict[tuple[str, str], Cell] = defaultdict(Cell)
    skipped = {rows_file.name: 0, events_file.name: 0}

    def key(seconds: float) -> str | None:
        day = datetime.fromtimestamp(seconds, zone).date()
        if (since and day < since) or (until and day > until):
            return None
        if period == "week":
            day -= timedelta(days=day.weekday())
            return f"{day.isocalendar()[0]}-W{day.isocalendar()[1]:02d}"
        return day.isoformat()

    for row in _lines(rows_file, skipped):
        try:
            at, camera, people, counts = float(row["start"]), str(row["camera"]), int(row["people"]), row["by_class"]
            share = row.get("compliance")
        except (KeyError, TypeError, ValueError):
            skipped[rows_file.name] += 1
            continue
        name = key(at)
        if name is None:
            continue
        cell = cells[(name, camera)]
        cell.windows += 1
        cell.people += people
        for state in CLASS_NAMES:
            cell.by_class[state] += int(counts.get(state, 0))
        if share is not None and people:
            cell.lowest = share if cell.lowest is None else min(cell.lowest, share)
    if events_file.is_file():
        for message in _lines(events_file, skipped):
            try:
                name, camera, state = key(float(message["start"])), str(message["camera"]), message["state"]
            except (KeyError, TypeError, ValueError):
                skipped[events_file.name] += 1
                continue
            if name is None or state not in CLASS_NAMES[1:]:
                continue
            if message.get("kind") == "start":
                cells[(name, camera)].events[state] += 1
            elif message.get("kind") == "end" and message.get("duration_s") is not None:
                cells[(name, camera)].durations.append(float(message["duration_s"]))
    rows = [cells[k].row(*k) for k in sorted(cells)]
    return Report(rows, {f: n for f, n in skipped.items() if n}, period)


def _lines(path: Path, skipped: dict[str, int]):
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                skipped[path.name] += 1
                continue
            if isinstance(value, dict):
                yield value
            else:
                skipped[path.name] += 1


def _chart(report: Report, column: str, title: str, ylabel: str, bars: bool) -> str:
    """A chart of `column` per period, one series per camera, as an inline PNG (base64)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    periods = sorted({r["period"] for r in report.rows})
    cameras = sorted({r["camera"] for r in report.rows})
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    width = 0.8 / max(1, len(cameras))
    for i, camera in enumerate(cameras):
        values = {r["period"]: r[column] for r in report.rows if r["camera"] == camera}
        ys = [values.get(p) for p in periods]
        if bars:
            ax.bar([x + i * width for x in range(len(periods))], [y or 0 for y in ys], width, label=camera)
        else:
            ax.plot(range(len(periods)), [float("nan") if y is None else y for y in ys], marker="o", label=camera)
    ax.set_xticks(range(len(periods)), periods, rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=9)
    if not bars:
        ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def render_html(report: Report) -> str:
    def cell(column: str, value) -> str:
        if value is None:
            return "–"
        return f"{value:.0%}" if column in ("compliance", "lowest") else html.escape(str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{cell(c, r[c])}</td>" for c in COLUMNS) + "</tr>" for r in report.rows)
    charts = ""
    if report.rows:
        compliance = _chart(report, "compliance", "Share of people masked correctly", "compliance", bars=False)
        events = _chart(report, "events", "Violation events", "events", bars=True)
        charts = f'<img alt="compliance per {report.period}" src="data:image/png;base64,{compliance}">'
        charts += f'<img alt="events per {report.period}" src="data:image/png;base64,{events}">'
    skipped = "".join(
        f"<li>{html.escape(f)}: {n} lines were not rows and were skipped</li>" for f, n in report.skipped.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mask compliance report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin-top: 12px; }}
th, td {{ border-bottom: 1px solid #e5e7eb; padding: 6px 10px; text-align: right; font-size: 13px; }}
td {{ white-space: nowrap; }}
th:nth-child(-n+2), td:nth-child(-n+2) {{ text-align: left; }}
th {{ background: #f3f4f6; }}
img {{ display: block; margin: 12px 0; max-width: 100%; }}
p.note {{ color: #555; font-size: 13px; max-width: 60em; }}
</style></head><body>
<h1>Mask compliance per {html.escape(report.period)} and camera</h1>
<p class="note">people: each window's people summed (a person in three windows counts three times);
compliance: with_mask / people, weighted by people; lowest: the worst single window; events: violation
events started (facemask watch's events: section); median_event_s: how long they lasted.</p>
{charts}
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<ul>{skipped}</ul>
</body></html>
"""
