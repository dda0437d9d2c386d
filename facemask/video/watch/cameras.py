"""The camera list of `facemask watch`: a YAML file, read at start and again whenever it changes.

    cameras:
      - id: lobby
        url: rtsp://10.0.0.5:554/stream1   # RTSP, http(s) MJPEG, a video file (looped), or a device index
        fps: 15                             # optional cap: frames above it are not decoded for the model
        zone: [0.0, 0.2, 1.0, 1.0]          # optional: x1, y1, x2, y2 as fractions; faces centred outside are ignored
        transport: tcp                      # RTSP only: tcp (default, survives NAT and loss) or udp
        rule: {min_duration_s: 10}          # optional, with an `events:` section: this camera's own rule
        blur: others                        # optional: faces in this camera's snapshots (all, others, none)

Every mistake names the file, the camera and the field, and what to write instead; a file
with one bad camera is refused whole, so a typo never silently drops a camera from an audit.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from facemask.core.errors import ConfigError, InputNotFoundError
from facemask.core.settings import STREAM_SCHEMES
from facemask.video.watch.urls import check_url

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FIELDS = ("id", "url", "fps", "zone", "transport", "rule", "blur")  # rule, blur: read by load_events
TRANSPORTS = ("tcp", "udp")


@dataclass(frozen=True)
class Camera:
    id: str
    url: str
    fps: float | None = None
    zone: tuple[float, float, float, float] | None = None
    transport: str = "tcp"

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @property
    def is_file(self) -> bool:
        return not (self.url.isdigit() or self.url.lower().startswith(STREAM_SCHEMES))


def load_cameras(path: Path) -> list[Camera]:
    """The cameras listed in `path`; ConfigError naming the file, camera and field on any mistake."""
    import yaml

    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such camera list; write one as docs/cameras.md shows")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the line it names") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list):
        raise ConfigError(f"{path}: expected a mapping with a `cameras:` list of {{id, url}} entries")
    cameras = [parse_camera(entry, f"{path}: cameras[{i}]") for i, entry in enumerate(data["cameras"])]
    seen: set[str] = set()
    for camera in cameras:
        if camera.id in seen:
            raise ConfigError(f"{path}: camera id {camera.id!r} is listed twice; give each camera its own id")
        seen.add(camera.id)
    return cameras


def load_events(path: Path):
    """The list's `events:` section with each camera's `rule` and `blur` (facemask.events.rules),
    or None when events are off; read once, when the watch starts."""
    import yaml

    from facemask.events.rules import load_events_config

    load_cameras(path)  # the cameras themselves first: their mistakes are named as ever
    return load_events_config(yaml.safe_load(path.read_text()), path)


def load_sampling(path: Path):
    """The list's `sampling:` section (facemask.learning.sampler.SamplingRule), or None when
    sampling is off (the default); read once, when the watch starts."""
    import yaml

    from facemask.learning.sampler import SamplingRule

    section = yaml.safe_load(path.read_text()).get("sampling")
    return None if section is None else SamplingRule.parse(section, f"{path}: sampling")


def parse_camera(entry: Any, where: str) -> Camera:
    """One camera from its mapping (a YAML entry or an HTTP body); `where` begins every error."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with at least `id` and `url`, got {entry!r}")
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
    camera_id = str(entry.get("id", ""))
    if not ID_PATTERN.match(camera_id):
        raise ConfigError(
            f"{where}: field `id` {entry.get('id')!r} must be 1-64 letters, digits, '_', '.' or '-' "
            "(it names the camera in logs, metrics and URLs)"
        )
    where = f"{where} ({camera_id})"
    url = entry.get("url")
    if isinstance(url, int) and not isinstance(url, bool):
        url = str(url)
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(
            f"{where}: field `url` is missing; give rtsp://..., http://..., a video file or a device index"
        )
    check_url(url.strip(), where)
    return Camera(
        id=camera_id,
        url=url.strip(),
        fps=_fps(entry.get("fps"), where),
        zone=_zone(entry.get("zone"), where),
        transport=_transport(entry.get("transport", "tcp"), where),
    )


def _fps(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 240:
        raise ConfigError(f"{where}: field `fps` {value!r} must be a number of frames per second in (0, 240]")
    return float(value)


def _zone(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and len(value) == 4
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in value)
    if not ok or not (value[0] < value[2] and value[1] < value[3]):
        raise ConfigError(
            f"{where}: field `zone` {value!r} must be [x1, y1, x2, y2] as fractions of the frame, "
            "0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1"
        )
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _transport(value: Any, where: str) -> str:
    if value not in TRANSPORTS:
        raise ConfigError(f"{where}: field `transport` {value!r} must be one of {', '.join(TRANSPORTS)}")
    return value


def check_sources(cameras: list[Camera], base: Path) -> list[Camera]:
    """Files named relative to the camera list are read relative to it; a file that does not exist
    is refused here, where the mistake is cheap, not retried for ever by its reader."""
    out = []
    for camera in cameras:
        if camera.is_file:
            path = Path(camera.url).expanduser()
            path = path if path.is_absolute() else (base / path)
            if not path.is_file():
                raise InputNotFoundError(
                    f"camera {camera.id}: field `url` {camera.url!r} is not a stream URL, a device index or a "
                    f"video file (looked for {path}); use rtsp://, http://, a device index or a file path"
                )
            camera = Camera(camera.id, str(path.resolve()), camera.fps, camera.zone, camera.transport)
        out.append(camera)
    return out
