"""Camera URLs: checked before a reader opens them, and shown without their secrets.

Camera URLs often carry credentials, in the user part (`rtsp://viewer:secret@host/...`) or in
the query (`http://cam/video.cgi?user=admin&pwd=...`, common on MJPEG cameras). Anything
that leaves the reader (the page, `GET /cameras`, logs, a stream's error text, which FFmpeg
writes with the URL in it) goes through `redacted` or `scrubbed` first.

Cameras added over the control API are also held to an allowlist (`check_api_source`): the
list file is the operator's, but a request is anyone's who can reach the API, and a URL opens
a connection from the node (server-side request forgery) or reads a file on it.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from facemask.core.errors import ConfigError

# Query parameters whose values are secrets (compared lower-case).
SECRET_PARAMS = frozenset(
    {"pwd", "pass", "passwd", "password", "pw", "user", "username", "usr", "login", "token", "key", "apikey",
     "api_key", "auth", "secret", "sig", "signature", "access_token", "session", "sessionid", "credentials"}
)  # fmt: skip
MASK = "***"
# What a camera added over the API may be, unless the operator says otherwise (--api-sources).
API_SOURCES = ("rtsp", "rtsps", "http", "https")
SOURCE_KINDS = ("rtsp", "rtsps", "rtmp", "http", "https", "file", "device")
# FFmpeg options in a URL that make the node listen, rather than connect out.
LISTEN_OPTIONS = frozenset({"listen", "listen_timeout"})


def redacted(url: str) -> str:
    """`url` with its password and secret query values replaced by ***. Never raises: a URL too
    broken to parse is shown as its scheme and ***, since any part of it may be the secret."""
    try:
        parts = urlsplit(url)
        if not parts.scheme or "://" not in url:
            return url  # a file path or a device index: nothing to hide
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{user}@{host}"
        query = "&".join(
            f"{quote(name, safe='')}={MASK if name.lower() in SECRET_PARAMS else quote(value, safe='/:,')}"
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        )
        return parts._replace(netloc=netloc, query=query).geturl()
    except Exception:  # noqa: BLE001 - a URL that cannot be parsed must not leak, nor break the page
        scheme = url.split("://", 1)[0] if "://" in url else ""
        return f"{scheme}://{MASK}" if scheme.isalnum() else MASK


def secrets_of(url: str) -> list[str]:
    """The secret strings in `url` (its password and secret query values), raw and decoded."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
        userinfo = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
        for pair in parts.query.split("&"):
            name, _, value = pair.partition("=")
            if unquote(name).lower() in SECRET_PARAMS and value:
                found.append(value)
    except Exception:  # noqa: BLE001
        pass
    return sorted({s for raw in found for s in (raw, unquote(raw)) if s}, key=len, reverse=True)


def scrubbed(text: str, url: str) -> str:
    """`text` (an error from FFmpeg or OpenCV, which name the URL) with `url`'s secrets masked."""
    text = text.replace(url, redacted(url))
    for secret in secrets_of(url):
        text = text.replace(secret, MASK)
    return text


def check_url(url: str, where: str) -> None:
    """A stream URL that a reader could open: ConfigError naming the field and the fix otherwise.
    (A broken port or an empty host once made every camera's status fail, not just this one's.)"""
    if "://" not in url:
        return  # a file path or a device index, checked by `check_sources`
    fix = "write it as scheme://[user:password@]host[:port]/path"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: field `url` {redacted(url)!r} is not a valid URL ({exc}); {fix}") from None
    if not host:
        raise ConfigError(f"{where}: field `url` {redacted(url)!r} names no host; {fix}")
    if port == 0:
        raise ConfigError(f"{where}: field `url` {redacted(url)!r} has port 0; give the camera's port (1-65535)")
    if {name.lower() for name, _ in parse_qsl(parts.query, keep_blank_values=True)} & LISTEN_OPTIONS:
        raise ConfigError(
            f"{where}: field `url` {redacted(url)!r} asks the node to listen for a connection; "
            "a camera is read by connecting to it: remove `listen` from the URL"
        )


def source_kind(url: str) -> str:
    """rtsp, http, ... for a URL; `device` for a device index; `file` for anything else."""
    if url.isdigit():
        return "device"
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def parse_sources(text: str) -> tuple[str, ...]:
    """--api-sources: a comma-separated subset of SOURCE_KINDS."""
    kinds = tuple(k.strip().lower() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in SOURCE_KINDS]
    if unknown:
        raise ConfigError(f"--api-sources {text!r}: {unknown[0]!r} is not one of {', '.join(SOURCE_KINDS)}")
    return kinds


def parse_hosts(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | str, ...]:
    """--api-hosts: networks (10.0.0.0/8, an address) or host names, comma-separated."""
    out: list = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            out.append(item.lower())
    return tuple(out)


def check_api_source(url: str, sources: tuple[str, ...], hosts: tuple = ()) -> None:
    """A camera URL sent over the control API, against the operator's allowlist: its kind among
    `sources`; and its host, as resolved now, within `hosts` when given. Link-local and
    unspecified addresses (cloud metadata services, 0.0.0.0) are refused whatever the list says.
    ConfigError (400) naming the rule and the option that changes it."""
    kind = source_kind(url)
    if kind not in sources:
        raise ConfigError(
            f"POST /cameras: a {kind} source is not allowed over the API (allowed: {', '.join(sources) or 'none'}); "
            "list it in the camera file, or start the watch with --api-sources including it"
        )
    if kind in ("file", "device"):
        return
    host = urlsplit(url).hostname or ""
    addresses = resolved(host)
    for address in addresses:
        if address.is_link_local or address.is_unspecified or address.is_multicast:
            raise ConfigError(
                f"POST /cameras: host {host!r} is {address}, a link-local, unspecified or multicast address "
                "(cloud metadata services live there); a camera cannot be read from it over the API"
            )
    if hosts and not any(_host_allowed(host, address, hosts) for address in addresses or [None]):
        raise ConfigError(f"POST /cameras: host {host!r} is not in --api-hosts; add its address or network to the list")


def resolved(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return []  # unknown now: its reader will say so, and retry
    return sorted({ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos}, key=str)


def _host_allowed(host: str, address, hosts: tuple) -> bool:
    for allowed in hosts:
        if isinstance(allowed, str):
            if host.lower() == allowed:
                return True
        elif address is not None and address.version == allowed.version and address in allowed:
            return True
    return False
