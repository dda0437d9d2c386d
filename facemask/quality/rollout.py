"""Which versions answer an alias's traffic, kept in the registry so every replica and every
command reads the same state: the version holding the alias, a canary (a challenger version
and the share of the default traffic it takes), and the versions that held the alias before,
which a rollback returns to.

In the registry, for alias `champion` of a model:
- the alias itself (`@champion`), moved by `facemask promote`;
- `@challenger` and the model tag `facemask.champion.canary_percent`, set by `promote --canary P`;
- the model tag `facemask.champion.previous`: the versions that held it, oldest first (the last
  HISTORY_LIMIT), appended to at each move and popped by `facemask rollback`.

A promotion or a rollback ends a running canary. Replicas read this state every `refresh_s`
(`serving.models`), so a change reaches every replica within refresh_s plus a model load.
"""

from __future__ import annotations

from dataclasses import dataclass

from facemask.core.errors import ConfigError
from facemask.tracking import aliases_and_tags, delete_alias, set_alias, set_model_tag

HISTORY_LIMIT = 20


def history_tag(alias: str) -> str:
    return f"facemask.{alias}.previous"


def canary_tag(alias: str) -> str:
    return f"facemask.{alias}.canary_percent"


def challenger_alias(alias: str) -> str:
    """The alias a canary of `alias` runs under: `challenger` for `champion`."""
    return "challenger" if alias == "champion" else f"{alias}-challenger"


@dataclass(frozen=True)
class Traffic:
    """Who answers `alias`'s traffic: `holder` (None: no version holds it), and during a canary
    `challenger`, which takes `percent` of it; `previous`: the versions a rollback returns to."""

    holder: str | None
    challenger: str | None = None
    percent: float = 0.0
    previous: tuple[str, ...] = ()


def traffic(name: str, alias: str, tracking_uri: str) -> Traffic:
    """The rollout state of `name`@`alias`, in one registry call."""
    aliases, tags = aliases_and_tags(name, tracking_uri)
    previous = tuple(v for v in tags.get(history_tag(alias), "").split(",") if v)
    challenger = aliases.get(challenger_alias(alias))
    try:
        percent = float(tags.get(canary_tag(alias), 0))
    except ValueError:
        percent = 0.0  # a tag edited by hand: no canary rather than a failing replica
    if not challenger or percent <= 0:
        challenger, percent = None, 0.0
    return Traffic(aliases.get(alias), challenger, percent, previous)


def move_alias(name: str, alias: str, version: str, tracking_uri: str) -> None:
    """Give `alias` to `version`, remember the version it leaves, and end any canary."""
    before = traffic(name, alias, tracking_uri)
    if before.holder is not None and before.holder != version:
        history = (*before.previous, before.holder)[-HISTORY_LIMIT:]
        set_model_tag(name, history_tag(alias), ",".join(history), tracking_uri)
    set_alias(name, alias, version, tracking_uri)
    end_canary(name, alias, tracking_uri)


def check_canary_percent(percent: float | None) -> None:
    """ConfigError unless `percent` is a share a canary can take, or None (no canary); checked
    before any registry work."""
    if percent is not None and not 0 < percent < 100:
        raise ConfigError(f"--canary {percent:g}: a share of the traffic between 0 and 100 (exclusive), such as 10")


def start_canary(name: str, alias: str, version: str, percent: float, tracking_uri: str) -> None:
    """Send `percent` of `alias`'s default traffic to `version`, the rest staying with the holder."""
    check_canary_percent(percent)
    before = traffic(name, alias, tracking_uri)
    if before.holder is None:
        raise ConfigError(f"no version holds @{alias} of {name}: promote one first; a canary shares its traffic")
    if before.holder == version:
        raise ConfigError(f"version {version} already holds @{alias}: a canary is for another version")
    set_alias(name, challenger_alias(alias), version, tracking_uri)
    set_model_tag(name, canary_tag(alias), f"{percent:g}", tracking_uri)


def end_canary(name: str, alias: str, tracking_uri: str) -> None:
    set_model_tag(name, canary_tag(alias), None, tracking_uri)
    delete_alias(name, challenger_alias(alias), tracking_uri)


@dataclass(frozen=True)
class Rollback:
    """What `rollback` did: `ended_canary` (the challenger stops taking traffic, the holder stays)
    or the alias moved from `from_version` back to `to_version`."""

    alias: str
    from_version: str | None
    to_version: str | None
    ended_canary: bool = False


def rollback(name: str, alias: str, tracking_uri: str) -> Rollback:
    """Undo the last rollout step of `alias`: a running canary ends; else the alias returns to
    the version that held it before the last move (that move is forgotten)."""
    state = traffic(name, alias, tracking_uri)
    if state.challenger:
        end_canary(name, alias, tracking_uri)
        return Rollback(alias, state.challenger, state.holder, ended_canary=True)
    if not state.previous:
        raise ConfigError(
            f"@{alias} of {name} has no earlier holder recorded (moves by `facemask promote` are recorded): "
            f"move it with `facemask promote --force --model-uri models:/{name}/N --alias {alias}`"
        )
    *rest, last = state.previous
    set_alias(name, alias, last, tracking_uri)
    set_model_tag(name, history_tag(alias), ",".join(rest) or None, tracking_uri)
    return Rollback(alias, state.holder, last)
