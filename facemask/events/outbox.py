"""A durable outbox: every message is written to SQLite before anyone is told, and stays
until each of its sinks has taken it, so a receiver that is down, a broker restarting or a
watch killed outright loses nothing. Delivery is at least once; each message carries its
idempotency key, which receivers use to drop a repeat.

A sink that fails is tried again after an exponential backoff with jitter (1 s, 2 s, 4 s ...
up to 15 s), with its oldest message as the probe; once it takes one, the rest follow at once,
oldest first. So a receiver down for a minute is asked about once every 15 s, not once per
message, and has everything within about 15 s of coming back. A refusal (a 4xx) is set aside
as `refused` with its answer, counted, and never retried.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
import time
from pathlib import Path

from facemask.events.sinks import Refused

log = logging.getLogger("facemask.events")
BACKOFF_S, BACKOFF_CAP_S = 1.0, 15.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT NOT NULL, sink TEXT NOT NULL, message TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, delivered REAL, last_error TEXT,
    PRIMARY KEY (key, sink)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sink, status, created);
CREATE TABLE IF NOT EXISTS events (
    key TEXT PRIMARY KEY, camera TEXT NOT NULL, state TEXT NOT NULL, start REAL NOT NULL,
    "end" REAL, message TEXT NOT NULL, acked_at REAL, acked_by TEXT, note TEXT
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (start);
"""


class Outbox:
    def __init__(self, path: Path, sinks: list) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.sinks = path, {s.name: s for s in sinks}
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a message written is on disk before it is announced
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.counts = {"delivered": 0, "retried": 0, "refused": 0}
        # Per sink: failures in a row, and when to try it again (its backoff).
        self.failures = dict.fromkeys(self.sinks, 0)
        self.next_try = dict.fromkeys(self.sinks, 0.0)

    # --- writing ----------------------------------------------------------------------------

    def put(self, message: dict) -> None:
        """Keep `message` for every sink (a key already kept is ignored), in one transaction with
        its event's latest message (the review's copy, and how a restart finds events left open)."""
        now = time.time()
        body = json.dumps(message, sort_keys=True)
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            for sink in self.sinks:
                self.db.execute(
                    "INSERT OR IGNORE INTO outbox (key, sink, message, created) VALUES (?, ?, ?, ?)",
                    (message["key"], sink, body, now),
                )
            if "event" in message:  # the review's copy: the latest message of each event
                self.db.execute(
                    'INSERT INTO events (key, camera, state, start, "end", message) VALUES (?, ?, ?, ?, ?, ?) '
                    'ON CONFLICT (key) DO UPDATE SET "end" = excluded."end", message = excluded.message',
                    (message["event"], message["camera"], message["state"], message["start"], message.get("end"), body),
                )
            self.db.execute("COMMIT")
        self.wake.set()

    def events(
        self,
        camera: str | None = None,
        state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        acked: bool | None = None,
        limit: int = 200,
    ) -> list[dict]:
        """Events for review, newest first: each one's latest message with its acknowledgement."""
        where, args = [], []
        for clause, value in (
            ("camera = ?", camera),
            ("state = ?", state),
            ("start >= ?", since),
            ("start < ?", until),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        if acked is not None:
            where.append("acked_at IS NOT NULL" if acked else "acked_at IS NULL")
        sql = "SELECT message, acked_at, acked_by, note FROM events"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY start DESC LIMIT ?"
        with self.lock:
            rows = self.db.execute(sql, (*args, limit)).fetchall()
        return [{**json.loads(m), "acked_at": at, "acked_by": by, "note": note} for m, at, by, note in rows]

    def event(self, key: str) -> dict | None:
        """An event's latest message, or None."""
        with self.lock:
            row = self.db.execute("SELECT message FROM events WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def acknowledge(self, event: str, by: str, note: str | None = None) -> bool:
        """Mark an event seen by `by`; False when there is no such event."""
        with self.lock:
            done = self.db.execute(
                "UPDATE events SET acked_at = ?, acked_by = ?, note = ? WHERE key = ?", (time.time(), by, note, event)
            )
        return done.rowcount == 1

    def left_open(self) -> list[dict]:
        """The start messages of events a previous run opened and never closed (it was killed)."""
        with self.lock:
            rows = self.db.execute('SELECT message FROM events WHERE "end" IS NULL ORDER BY start').fetchall()
        return [json.loads(m) for (m,) in rows]

    # --- delivering -------------------------------------------------------------------------

    def deliver_due(self, now: float | None = None, limit: int = 100) -> int:
        """Send each sink not backing off its waiting messages, oldest first, until one fails;
        returns how many were taken."""
        now = time.time() if now is None else now
        taken = 0
        for name, sink in self.sinks.items():
            if self.next_try[name] > now:
                continue
            with self.lock:
                rows = self.db.execute(
                    "SELECT key, message, attempts FROM outbox WHERE sink = ? AND status = 'pending' "
                    "ORDER BY created LIMIT ?",
                    (name, limit),
                ).fetchall()
            for key, body, attempts in rows:
                try:
                    sink.send(json.loads(body))
                except Refused as exc:
                    self._mark(key, name, "refused", attempts + 1, str(exc))
                    self.counts["refused"] += 1
                    log.warning("event message %s refused by %s: %s", key, name, exc)
                except Exception as exc:  # noqa: BLE001 - Retry, or a sink's bug: it must not end delivery
                    self.failures[name] += 1
                    delay = min(BACKOFF_CAP_S, BACKOFF_S * 2 ** (self.failures[name] - 1))
                    self.next_try[name] = now + delay * random.uniform(0.5, 1.0)
                    with self.lock:
                        self.db.execute(
                            "UPDATE outbox SET attempts = ?, last_error = ? WHERE key = ? AND sink = ?",
                            (attempts + 1, str(exc)[:300], key, name),
                        )
                    self.counts["retried"] += 1
                    break  # the rest wait for this sink's backoff
                else:
                    self.failures[name] = 0
                    self._mark(key, name, "delivered", attempts + 1, None)
                    self.counts["delivered"] += 1
                    taken += 1
        return taken

    def _mark(self, key: str, sink: str, status: str, attempts: int, error: str | None) -> None:
        with self.lock:
            self.db.execute(
                "UPDATE outbox SET status = ?, attempts = ?, delivered = ?, last_error = ? WHERE key = ? AND sink = ?",
                (status, attempts, time.time() if status == "delivered" else None, error, key, sink),
            )

    def backlog(self) -> dict[str, int]:
        """Messages waiting, per sink (0 for a sink with none)."""
        with self.lock:
            rows = self.db.execute("SELECT sink, count(*) FROM outbox WHERE status = 'pending' GROUP BY sink")
            found = dict(rows.fetchall())
        return {sink: found.get(sink, 0) for sink in self.sinks}

    def oldest_pending_s(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        with self.lock:
            (created,) = self.db.execute("SELECT min(created) FROM outbox WHERE status = 'pending'").fetchone()
        return 0.0 if created is None else now - created

    def start(self) -> None:
        """Deliver from a thread of its own until `stop`."""

        def run() -> None:
            while not self.stopping.is_set():
                self.wake.clear()
                try:
                    self.deliver_due()
                except Exception as exc:  # noqa: BLE001 - the database itself failing: say so, go on
                    log.warning("event delivery failed: %s", exc)
                # Everything due was sent, or its sink is backing off: sleep until the first
                # backoff ends (a new message wakes it at once), and at most a second.
                backing_off = [t - time.time() for t in self.next_try.values() if t > time.time()]
                self.wake.wait(min([1.0, *backing_off]))

        self.thread = threading.Thread(target=run, name="facemask-event-delivery", daemon=True)
        self.thread.start()

    def stop(self, flush_s: float = 2.0, before_closing=None) -> None:
        """Give pending messages `flush_s` to go out, then stop; what is left is sent at the next
        start. `before_closing()` runs once delivery has stopped, while the database is open."""
        deadline = time.monotonic() + flush_s
        while time.monotonic() < deadline and any(self.backlog().values()) and self.thread is not None:
            self.wake.set()
            time.sleep(0.05)
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        if before_closing is not None:
            before_closing()
        for sink in self.sinks.values():
            sink.close()
        self.db.close()
