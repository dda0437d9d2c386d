"""What counts as a violation, and where events go: the `events:` section of the camera list.

    events:
      rule:                        # every camera's, unless the camera gives its own `rule:`
        states: [without_mask, mask_weared_incorrect]
        min_duration_s: 5          # a person must be seen violating this long ...
        min_observations: 3        # ... on at least this many frames ...
        agreement: 0.6             # ... in a violating state on at least this share of them
        cooldown_s: 60             # the same person raises no new event this soon after one ends
        end_after_s: 3             # an event ends once its person is compliant or gone this long
      blur: all                    # faces in snapshots: all (default), others (all but the subject's), none
      evidence: {max_mb: 500, max_age_days: 30}
      clip: {before_s: 4, after_s: 4, fps: 4, width: 640}   # optional: a WebM clip per event, faces blurred as above
      webhook: {url: https://alerts.example/hook, secret_env: FACEMASK_WEBHOOK_SECRET}
      mqtt: {host: 127.0.0.1, port: 1883, topic_prefix: facemask, username: watch, password_env: FACEMASK_MQTT_PASSWORD}

A mistake is refused whole before anything starts, in one line naming the file, the camera
and the field. A secret never sits in the list: `secret_env`/`password_env` name an
environment variable, `secret_file`/`password_file` a file, and a placeholder is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from facemask.core.classes import CLASS_NAMES
from facemask.core.errors import ConfigError

BLUR_MODES = ("all", "others", "none")
VIOLATING = ("without_mask", "mask_weared_incorrect")
# Values that mean "fill me in": refused as secrets, so a copied example never goes live.
PLACEHOLDERS = ("change-me", "changeme", "secret", "password", "xxx", "todo", "<", "${")


@dataclass(frozen=True)
class Rule:
    states: tuple[str, ...] = VIOLATING
    min_duration_s: float = 5.0
    min_observations: int = 3
    agreement: float = 0.6
    cooldown_s: float = 60.0
    end_after_s: float = 3.0


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: str = field(repr=False)
    timeout_s: float = 5.0


@dataclass(frozen=True)
class Mqtt:
    host: str
    port: int = 1883
    topic_prefix: str = "facemask"
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Clip:
    """A clip per event: `before_s` seconds before the alert and `after_s` after, at `fps`
    frames a second, `width` pixels across (facemask.events.clips)."""

    before_s: float = 4.0
    after_s: float = 4.0
    fps: float = 4.0
    width: int = 640


@dataclass(frozen=True)
class EventsConfig:
    rule: Rule = Rule()
    blur: str = "all"
    max_mb: float = 500.0
    max_age_days: float = 30.0
    webhook: Webhook | None = None
    mqtt: Mqtt | None = None
    clip: Clip | None = None  # None: snapshots only
    # Per camera: (rule, blur) where the camera's entry overrides the section's.
    cameras: dict[str, tuple[Rule, str]] = field(default_factory=dict)

    def for_camera(self, camera_id: str) -> tuple[Rule, str]:
        return self.cameras.get(camera_id, (self.rule, self.blur))

    @property
    def sinks(self) -> list[str]:
        return [name for name, on in (("webhook", self.webhook), ("mqtt", self.mqtt)) if on is not None]


def load_events_config(data: dict, path: Path, env: dict[str, str] | None = None) -> EventsConfig | None:
    """The camera list's `events:` section (None when absent: events are off), with each
    camera's own `rule:` and `blur:`. `data` is the parsed YAML; `env` the environment."""
    env = os.environ if env is None else env
    section = data.get("events")
    per_camera = [c for c in data.get("cameras") or [] if isinstance(c, dict) and ("rule" in c or "blur" in c)]
    if section is None:
        if per_camera:
            raise ConfigError(
                f"{path}: camera {per_camera[0].get('id')!r} sets `rule`/`blur`, but the list has no "
                "`events:` section; add one (docs/cameras.md#events) or remove the fields"
            )
        return None
    where = f"{path}: events"
    _mapping(section, where, ("rule", "blur", "evidence", "clip", "webhook", "mqtt"))
    rule = parse_rule(section.get("rule") or {}, f"{where}.rule")
    blur = _blur(section.get("blur", "all"), f"{where}.blur")
    evidence = section.get("evidence") or {}
    _mapping(evidence, f"{where}.evidence", ("max_mb", "max_age_days"))
    cfg = EventsConfig(
        rule=rule,
        blur=blur,
        max_mb=_number(evidence.get("max_mb", 500), f"{where}.evidence.max_mb", low=1),
        max_age_days=_number(evidence.get("max_age_days", 30), f"{where}.evidence.max_age_days", low=0.001),
        webhook=_webhook(section.get("webhook"), f"{where}.webhook", path.parent, env),
        mqtt=_mqtt(section.get("mqtt"), f"{where}.mqtt", path.parent, env),
        clip=_clip(section["clip"], f"{where}.clip") if "clip" in section else None,
    )
    cameras = {}
    for entry in per_camera:
        camera_where = f"{path}: camera {entry.get('id')!r}"
        own = parse_rule(entry.get("rule") or {}, f"{camera_where}: field `rule`", base=rule)
        cameras[str(entry.get("id"))] = (own, _blur(entry.get("blur", blur), f"{camera_where}: field `blur`"))
    return replace(cfg, cameras=cameras)


def parse_rule(value: Any, where: str, base: Rule = Rule()) -> Rule:
    """A rule from its mapping; fields not given keep `base`'s."""
    names = tuple(Rule.__dataclass_fields__)
    _mapping(value, where, names)
    states = value.get("states", base.states)
    if isinstance(states, str):
        states = [states]
    if not isinstance(states, (list, tuple)) or not states or any(s not in CLASS_NAMES for s in states):
        raise ConfigError(f"{where}.states {states!r}: give a list of classes from {', '.join(CLASS_NAMES)}")
    rule = Rule(
        states=tuple(states),
        min_duration_s=_number(value.get("min_duration_s", base.min_duration_s), f"{where}.min_duration_s"),
        min_observations=int(
            _number(value.get("min_observations", base.min_observations), f"{where}.min_observations", low=1)
        ),
        agreement=_number(value.get("agreement", base.agreement), f"{where}.agreement", low=0.0, high=1.0),
        cooldown_s=_number(value.get("cooldown_s", base.cooldown_s), f"{where}.cooldown_s"),
        end_after_s=_number(value.get("end_after_s", base.end_after_s), f"{where}.end_after_s", low=0.1),
    )
    if rule.agreement <= 0.5:
        raise ConfigError(f"{where}.agreement {rule.agreement}: must be above 0.5 (a majority of the observations)")
    return rule


def _clip(value: Any, where: str) -> Clip:
    """`clip: {}` takes the defaults; the bounds keep a clip short and its buffer small."""
    value = {} if value is None else value
    _mapping(value, where, tuple(Clip.__dataclass_fields__))
    base = Clip()
    return Clip(
        before_s=_number(value.get("before_s", base.before_s), f"{where}.before_s", high=30),
        after_s=_number(value.get("after_s", base.after_s), f"{where}.after_s", high=30),
        fps=_number(value.get("fps", base.fps), f"{where}.fps", low=1, high=15),
        width=int(_number(value.get("width", base.width), f"{where}.width", low=160, high=1920)),
    )


def read_secret(entry: dict, name: str, where: str, base: Path, env: dict[str, str], required: bool) -> str | None:
    """A secret from `<name>_env` (an environment variable) or `<name>_file`; never inline."""
    if name in entry:
        raise ConfigError(
            f"{where}.{name}: a secret is never written in the camera list; use {name}_env (an environment "
            f"variable's name) or {name}_file (a file readable by the watch alone)"
        )
    if f"{name}_env" in entry:
        variable = str(entry[f"{name}_env"])
        secret = env.get(variable)
        if not secret:
            raise ConfigError(f"{where}.{name}_env: the environment variable {variable} is not set; export it")
    elif f"{name}_file" in entry:
        file = Path(str(entry[f"{name}_file"])).expanduser()
        file = file if file.is_absolute() else base / file
        if not file.is_file():
            raise ConfigError(f"{where}.{name}_file: {file} does not exist; write the secret there")
        secret = file.read_text().strip()
    elif required:
        raise ConfigError(f"{where}: give {name}_env or {name}_file (the {name} signs or opens the connection)")
    else:
        return None
    if len(secret) < 8 or any(p in secret.lower() for p in PLACEHOLDERS):
        raise ConfigError(f"{where}.{name}: looks like a placeholder or is under 8 characters; set a real one")
    return secret


def _webhook(value: Any, where: str, base: Path, env: dict[str, str]) -> Webhook | None:
    if value is None:
        return None
    _mapping(value, where, ("url", "secret", "secret_env", "secret_file", "timeout_s"))
    url = value.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url {url!r}: give the receiver's http:// or https:// URL")
    secret = read_secret(value, "secret", where, base, env, required=True)
    timeout = _number(value.get("timeout_s", 5.0), f"{where}.timeout_s", low=0.1)
    return Webhook(url, secret, timeout)  # type: ignore[arg-type]


def _mqtt(value: Any, where: str, base: Path, env: dict[str, str]) -> Mqtt | None:
    if value is None:
        return None
    _mapping(value, where, ("host", "port", "topic_prefix", "username", "password", "password_env", "password_file"))
    host = value.get("host")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{where}.host: give the broker's host name or address")
    port = int(_number(value.get("port", 1883), f"{where}.port", low=1, high=65535))
    prefix = value.get("topic_prefix", "facemask")
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "#+"):
        raise ConfigError(f"{where}.topic_prefix {prefix!r}: a topic level without wildcards (# or +)")
    username = value.get("username")
    password = read_secret(value, "password", where, base, env, required=False)
    if password and not username:
        raise ConfigError(f"{where}: a password without `username`; give both or neither")
    return Mqtt(host, port, prefix.strip("/"), None if username is None else str(username), password)


def _mapping(value: Any, where: str, fields: tuple[str, ...]) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping with {', '.join(fields)}, got {value!r}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; the fields are {', '.join(fields)}")


def _number(value: Any, where: str, low: float = 0.0, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low or (high and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f"at least {low}"
        raise ConfigError(f"{where} {value!r}: must be a number, {bounds}")
    return float(value)


def _blur(value: Any, where: str) -> str:
    if value not in BLUR_MODES:
        raise ConfigError(f"{where} {value!r}: must be one of {', '.join(BLUR_MODES)} (all blurs every face)")
    return value
