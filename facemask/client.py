"""A small client of the facemask endpoint, for scripts: standard library only.

    from facemask.client import Client
    result = Client("http://127.0.0.1:8000").predict("photo.jpg", conf=0.3)
    for d in result["detections"]:
        print(d["label"], d["confidence"], d["box"])

A 503 (the server is overloaded or a replica is starting) is retried with exponential
backoff, honouring Retry-After. So is a request lost with the replica that held it: a
dropped connection, or the proxy's bare "Internal Server Error" (the app's own errors are
JSON): inference has no side effects, so sending it again is safe. Any other error raises
`EndpointError` with the server's own message.
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

from facemask.errors import EndpointError

MULTIPLEX_HEADER = "serve_multiplexed_model_id"


class Client:
    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        backoff_s: float = 0.5,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("FACEMASK_API_KEY")
        self.timeout, self.retries, self.backoff_s = timeout, retries, backoff_s

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
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()
            except (ConnectionResetError, http.client.RemoteDisconnected):
                if attempt < self.retries:  # the replica died mid-request
                    time.sleep(self.backoff_s * 2**attempt)
                    continue
                raise
            except urllib.error.HTTPError as exc:
                body = exc.read()
                lost = exc.code == 500 and not body.lstrip().startswith(b"{")
                if (exc.code == 503 or lost) and attempt < self.retries:
                    retry_after = exc.headers.get("Retry-After", "")
                    wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 0.0
                    time.sleep(max(wait, self.backoff_s * 2**attempt))
                    continue
                try:
                    payload = json.loads(body)
                    raise EndpointError(
                        exc.code, payload.get("error", "error"), payload.get("message", str(payload))
                    ) from None
                except (ValueError, AttributeError):
                    raise EndpointError(
                        exc.code, "http_error", body[:300].decode(errors="replace") or exc.reason
                    ) from None
        raise AssertionError("unreachable")
