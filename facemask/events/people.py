"""One camera's tracked people become violation events.

A person's track opens an event once, over at least `min_duration_s`, it was seen on at
least `min_observations` frames and in a violating state on at least `agreement` of them (a
consensus, so one misread frame neither raises nor ends an alert). The event stays open
while the person keeps violating; it ends `end_after_s` after the last violating sighting
(the person put a mask on, or left), or at a stop. The same person raises no new event
within `cooldown_s` of one ending.

Each event has a key that names it for ever (camera, track, start in ms, and the watch's
run id, so a restarted watch never reuses one): receivers drop a message whose key they
have seen, which makes at-least-once delivery exactly-once for them.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from facemask.events.rules import Rule

MAX_SCORES = 120  # an event keeps this many of its most recent scores


@dataclass
class Event:
    key: str
    camera: str
    track_id: int
    state: str
    start: float
    model_version: str | None
    last_seen: float
    end: float | None = None
    end_reason: str | None = None
    scores: list[float] = field(default_factory=list)
    observations: int = 0
    best: dict | None = None  # the sighting with the highest violating score: frame, time, box
    snapshot: str | None = None  # where its snapshot was written (None: none could be)

    def to_message(self, kind: str) -> dict[str, Any]:
        """What is delivered: `kind` is "start" (the alert) or "end" (the whole event)."""
        return {
            "key": f"{self.key}:{kind}",
            "event": self.key,
            "kind": kind,
            "camera": self.camera,
            "track_id": self.track_id,
            "state": self.state,
            "start": round(self.start, 3),
            "end": None if self.end is None else round(self.end, 3),
            "duration_s": round((self.end or self.last_seen) - self.start, 3),
            "end_reason": self.end_reason,
            "observations": self.observations,
            "score_max": round(max(self.scores), 4) if self.scores else None,
            "score_median": round(sorted(self.scores)[len(self.scores) // 2], 4) if self.scores else None,
            "model_version": self.model_version,
        }


@dataclass
class _Track:
    sightings: deque = field(default_factory=deque)  # (at, state, score) since the streak began
    last_violating: float | None = None
    best: dict | None = None
    cooldown_until: float = 0.0


class PersonEvents:
    """Events of one camera. `observe` each confirmed person's sighting, `tick` once per frame
    or second; both return the changes: ("start" | "end", Event)."""

    def __init__(self, camera: str, rule: Rule, run_id: str, model_version: str | None = None) -> None:
        self.camera, self.rule, self.run_id, self.model_version = camera, rule, run_id, model_version
        self.tracks: dict[int, _Track] = {}
        self.open: dict[int, Event] = {}

    def observe(self, track_id: int, state: str, score: float, at: float, best: dict | None = None) -> list:
        """One sighting of a person; `best` is what to keep if it is their best violating one
        (the caller's handle on the frame: it is returned in `Event.best`, never read here)."""
        track = self.tracks.setdefault(track_id, _Track())
        violating = state in self.rule.states
        event = self.open.get(track_id)
        if event is not None:
            event.last_seen, event.observations = at, event.observations + 1
            if violating:  # its snapshot was taken at the start: no frame is held while it lasts
                track.last_violating = at
                event.scores = (event.scores + [score])[-MAX_SCORES:]
            return []
        if not violating and not track.sightings:
            return []  # compliant, with no streak to extend
        track.sightings.append((at, state, score))
        if violating:
            track.last_violating = at
            if best is not None and (track.best is None or score > track.best["score"]):
                track.best = {**best, "score": score}
        share = sum(s in self.rule.states for _, s, _ in track.sightings) / len(track.sightings)
        if share < self.rule.agreement and not violating:
            self._reset(track)  # the consensus says compliant: the streak is over
            return []
        span = at - track.sightings[0][0]
        ready = len(track.sightings) >= self.rule.min_observations and span >= self.rule.min_duration_s
        if not ready or share < self.rule.agreement or at < track.cooldown_until:
            return []
        return [("start", self._open(track_id, track, at))]

    def tick(self, now: float) -> list:
        """End the events whose person has not been seen violating for `end_after_s`, and forget
        streaks gone as stale (a person who left before an event opened)."""
        changes = []
        for track_id, event in list(self.open.items()):
            track = self.tracks[track_id]
            if now - (track.last_violating or event.start) >= self.rule.end_after_s:
                changes.append(("end", self._close(track_id, now, "compliant or gone")))
        for track_id, track in list(self.tracks.items()):
            if track_id not in self.open and track.sightings and now - track.sightings[-1][0] > self.rule.end_after_s:
                self._reset(track)
            if track_id not in self.open and not track.sightings and now >= track.cooldown_until:
                del self.tracks[track_id]  # nothing left to remember: bounded however long the watch runs
        return changes

    def close_all(self, now: float, reason: str = "watch stopped") -> list:
        """End every open event (a stop, or the camera removed)."""
        return [("end", self._close(track_id, now, reason)) for track_id in list(self.open)]

    def _open(self, track_id: int, track: _Track, at: float) -> Event:
        states = Counter(s for _, s, _ in track.sightings if s in self.rule.states)
        start = track.sightings[0][0]
        event = Event(
            key=f"{self.camera}-{self.run_id}-{track_id}-{int(start * 1000)}",
            camera=self.camera,
            track_id=track_id,
            state=states.most_common(1)[0][0],
            start=start,
            model_version=self.model_version,
            last_seen=at,
            scores=[score for _, s, score in track.sightings if s in self.rule.states][-MAX_SCORES:],
            observations=len(track.sightings),
            best=track.best,
        )
        self.open[track_id] = event
        self._reset(track)
        return event

    def _close(self, track_id: int, now: float, reason: str) -> Event:
        event = self.open.pop(track_id)
        track = self.tracks[track_id]
        event.end = max(event.start, min(now, track.last_violating or now))
        event.end_reason = reason
        track.cooldown_until = event.end + self.rule.cooldown_s
        return event

    @staticmethod
    def _reset(track: _Track) -> None:
        track.sightings.clear()
        track.best = None
