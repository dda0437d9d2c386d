"""A small client of the facemask endpoint, for scripts: standard library only.

    from facemask.serving.client import Client
    result = Client("http://127.0.0.1:8000").predict("photo.jpg", conf=0.3)
    for d in result["detections"]:
        print(d["label"], d["confidence"], d["box"])

A 503 (the server is overloaded or a replica is starting) is retried with exponential
backoff, honouring Retry-After. So is a request lost with the replica that held it: a
dropped connection, or the proxy's bare "Internal Server Error" (the app's own errors are
JSON): inference has no side effects, so sending it again is safe. A connection refused or
reset (a proxy restarting), and a bare 404 from an ingress that has just restarted, are
retried the same way until `deadline_s` has passed since the call began. Any other error,
an app's 4xx above all, raises `EndpointError` at once with the server's own message.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from facemask.core.errors import EndpointError

MULTIPLEX_HEADER = "serve_multiplexed_model_id"
# How long one call keeps retrying refused or reset connections and 503s: long enough to ride
# through a proxy or replica restart (docs/reliability.md measured under 10 s; a head restart more).
DEADLINE_S = 45.0


class Client:
    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        deadline_s: float = DEADLINE_S,
        max_backoff_s: float = 2.0,
    ) -> None:
        """`retries` bounds the answers retried (503s, a lost request); `deadline_s` bounds the
        whole call, however many connections were refused or reset on the way."""
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("FACEMASK_API_KEY")
        self.timeout, self.retries, self.backoff_s = timeout, retries, backoff_s
        self.deadline_s, self.max_backoff_s = deadline_s, max_backoff_s

    def predict(self, image: str | Path | bytes, model: str | None = None, **params: Any) -> dict:
        """Detections for one image (a path or encoded bytes); params: conf, iou, imgsz, max_det."""
        return json.loads(self._post("/predict", image, model, params))

    def predict_image(self, image: str | Path | bytes, model: str | None = None, **params: Any) -> bytes:
        """The image with boxes drawn, as JPEG bytes."""
        return self._post("/predict/image", image, model, params)

    def health(self) -> dict:
        return json.loads(self._request("GET", "/healthz"))

    def model(self, model: str | None = None) -> dict:
        return json.loads(self._request("GET", "/model", model=model))

    def models(self) -> dict:
        return json.loads(self._request("GET", "/models"))

    def _post(self, path: str, image: str | Path | bytes, model: str | None, params: dict) -> bytes:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self._request("POST", f"{path}?{query}" if query else path, data, model)

    def _request(self, method: str, path: str, data: bytes | None = None, model: str | None = None) -> bytes:
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/octet-stream"
        if model:
            headers[MULTIPLEX_HEADER] = str(model)
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        deadline = time.monotonic() + self.deadline_s
        answered = 0  # answers retried (a 503, a lost request), bounded by `retries`
        attempt = 0
        while True:
            wait = min(self.backoff_s * 2**attempt, self.max_backoff_s)
            attempt += 1
            request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                body = exc.read()
                if _transient(exc.code, body) and answered < self.retries and time.monotonic() + wait < deadline:
                    answered += 1
                    retry_after = exc.headers.get("Retry-After", "")
                    hinted = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 0.0
                    time.sleep(max(hinted, wait))
                    continue
                raise _endpoint_error(exc.code, body, exc.reason) from None
            except (OSError, http.client.HTTPException) as exc:
                # Refused (a proxy restarting), reset or closed without an answer (a replica or proxy died).
                if _connection_lost(exc) and time.monotonic() + wait < deadline:
                    time.sleep(wait)
                    continue
                raise


def _transient(status: int, body: bytes) -> bool:
    """An answer worth sending the request again for. The app's own errors are JSON; a bare 500
    is a request lost with its replica, and a bare 404 an ingress that restarted and has not
    loaded its routes yet (HAProxy: about 0.6 s here). 502, 503 and 504: no replica, for now."""
    bare = not body.lstrip().startswith(b"{")
    return status in (502, 503, 504) or (status in (404, 500) and bare)


def _connection_lost(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", exc)  # urllib wraps socket errors in URLError
    return isinstance(
        reason,
        (
            ConnectionRefusedError,
            ConnectionResetError,
            ConnectionAbortedError,
            http.client.RemoteDisconnected,
            BrokenPipeError,
        ),
    )


def _endpoint_error(status: int, body: bytes, reason: str) -> EndpointError:
    """The server's own error, from its JSON answer when it sent one."""
    try:
        payload = json.loads(body)
        return EndpointError(status, payload.get("error", "error"), payload.get("message", str(payload)))
    except (ValueError, AttributeError):
        return EndpointError(status, "http_error", body[:300].decode(errors="replace") or reason)
