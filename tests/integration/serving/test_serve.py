"""The Serve application over real HTTP: a local Ray cluster, Serve's proxy on loopback, a real MLflow registry."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import zlib

import httpx
import pytest
from PIL import Image

from facemask.core.errors import ConfigError
from facemask.serving.client import Client, EndpointError
from tests.services import (
    API_KEY,
    LIMITS,
    free_port,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http(endpoint):
    with httpx.Client(base_url=endpoint["url"], timeout=60) as client:
        yield client


def png_bytes(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_serves(http, known_image) -> None:
    response = http.post("/predict", params={"conf": 0, "imgsz": 160, "max_det": 3}, content=known_image.read_bytes())
    assert response.status_code == 200, response.text
    assert len(response.json()["detections"]) == 3


def test_predict_matches_the_model_called_in_process(http, endpoint, known_image):
    from facemask.detection.detector import load_detector

    params = {"conf": 0.0, "iou": 0.6, "imgsz": 160, "max_det": 20}
    with known_image.open("rb") as f:
        response = http.post("/predict", params=params, files={"file": (known_image.name, f, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    detector = load_detector(
        f"models:/{endpoint['name']}/{endpoint['champion']}", tracking_uri=endpoint["tracking_uri"]
    )
    expected = [d.to_dict() for d in detector.predict([Image.open(known_image)], **params)[0]]
    assert len(expected) == 20
    assert [d["label"] for d in body["detections"]] == [d["label"] for d in expected]
    for got, want in zip(body["detections"], expected):
        assert got["class_id"] == want["class_id"]
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-3)
        for k in ("x1", "y1", "x2", "y2"):
            assert got["box"][k] == pytest.approx(want["box"][k], abs=0.5)
    with Image.open(known_image) as image:
        assert body["image"] == {"width": image.width, "height": image.height}
    assert sum(body["counts"].values()) == 20 and set(body["counts"]) == {
        "with_mask",
        "without_mask",
        "mask_weared_incorrect",
    }
    assert body["model"] == {
        "name": endpoint["name"],
        "version": endpoint["champion"],
        "run_id": endpoint["run_id"],
        "uri": f"models:/{endpoint['name']}@champion",
        "backend": "pt",
    }
    assert body["timings"]["inference_ms"] > 0 and body["timings"]["total_ms"] >= body["timings"]["inference_ms"]

    raw = http.post("/predict", params=params, content=known_image.read_bytes(), headers={"content-type": "image/png"})
    assert raw.json()["detections"] == body["detections"]


def test_annotated_image_and_metadata(http, endpoint, known_image):
    response = http.post(
        "/predict/image", params={"conf": 0, "imgsz": 160, "max_det": 5}, content=known_image.read_bytes()
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-detections"] == "5"
    with Image.open(known_image) as original, Image.open(io.BytesIO(response.content)) as annotated:
        assert annotated.size == original.size
    assert http.get("/healthz").json() == {"status": "ok"}
    model = http.get("/model").json()
    assert model["version"] == endpoint["champion"] and model["run_id"] == endpoint["run_id"]
    assert model["classes"] == ["with_mask", "without_mask", "mask_weared_incorrect"]
    assert "val_mAP50-95" in model["metrics"]


def test_openapi_schema_describes_the_real_endpoints(http, known_image):
    schema = http.get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    assert set(predict["requestBody"]["content"]) >= {"multipart/form-data", "image/*"}
    assert {p["name"] for p in predict["parameters"] if p["in"] == "query"} == {"conf", "iou", "imgsz", "max_det"}
    assert {"400", "401", "413", "415", "422", "503"} <= set(predict["responses"])
    ref = predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    declared = set(schema["components"]["schemas"][ref]["properties"])
    real = http.post("/predict", params={"conf": 0.5, "imgsz": 160}, content=known_image.read_bytes()).json()
    assert declared == set(real)
    assert {"/predict/image", "/healthz", "/model", "/models"} <= set(schema["paths"])


def zero_width_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 0, 16, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 128, 0)).save(buffer, format="GIF")
    return buffer.getvalue()


def bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, format="PNG")  # 25 Mpx in a few kB
    assert len(buffer.getvalue()) < 100_000
    return buffer.getvalue()


BAD_INPUTS = {
    "not_an_image": (lambda img: {"content": b"this is not an image at all"}, 400),
    "truncated_image": (lambda img: {"content": img.read_bytes()[: len(img.read_bytes()) // 2]}, 400),
    "too_many_pixels": (lambda img: {"content": bomb_png()}, 413),
    "unsupported_format": (lambda img: {"content": gif_bytes()}, 415),
    "empty_body": (lambda img: {"content": b""}, 400),
    "zero_size_image": (lambda img: {"content": zero_width_png()}, 400),
    "body_too_large": (lambda img: {"content": os.urandom(1_200_000)}, 413),
    "bad_multipart": (
        lambda img: {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=y"}},
        400,
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_4xx_and_the_replica_keeps_serving(http, known_image, case):
    make, status = BAD_INPUTS[case]
    response = http.post("/predict", **make(known_image))
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == case or (case == "bad_multipart" and body["error"] in ("bad_multipart", "empty_body"))
    assert body["message"]
    assert_serves(http, known_image)


def test_unknown_routes_methods_and_16_bit_images(http, endpoint):
    import numpy as np

    for method, path, status, error in (
        ("GET", "/nowhere", 404, "not_found"),
        ("GET", "/predict", 405, "method_not_allowed"),
    ):
        answer = http.request(method, path)
        assert answer.status_code == status and answer.json()["error"] == error, answer.text
        assert "/docs" in answer.json()["message"]
    deep = io.BytesIO()
    Image.fromarray(np.tile(np.linspace(0, 65535, 96, dtype=np.uint16), (64, 1))).save(deep, format="PNG")
    answer = http.post("/predict", params={"imgsz": 160}, content=deep.getvalue())
    assert answer.status_code == 200 and answer.json()["image"] == {"width": 96, "height": 64}
    missing = http.get("/model", headers={"serve_multiplexed_model_id": "nobody-alias"})
    assert missing.status_code == 404 and endpoint["tracking_uri"] not in missing.text


@pytest.mark.parametrize(
    "params", [{"conf": 2}, {"conf": "high"}, {"iou": -0.1}, {"imgsz": 0}, {"imgsz": "big"}, {"max_det": 0}]
)
def test_bad_query_values_get_422(http, known_image, params):
    response = http.post("/predict", params=params, content=known_image.read_bytes())
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_parameter" and next(iter(params)) in response.json()["message"]
    assert_serves(http, known_image)


def test_multiplexed_requests_are_served_by_the_version_they_name(http, endpoint, known_image):
    def served_by(model_id: str | None) -> httpx.Response:
        headers = {"serve_multiplexed_model_id": model_id} if model_id else {}
        return http.post("/predict", params={"imgsz": 160}, content=known_image.read_bytes(), headers=headers)

    assert served_by(None).json()["model"]["version"] == endpoint["champion"]
    assert served_by(endpoint["other"]).json()["model"]["version"] == endpoint["other"]
    assert served_by("champion").json()["model"]["version"] == endpoint["champion"]
    assert served_by(endpoint["champion"]).json()["model"]["version"] == endpoint["champion"]
    missing = served_by("999")
    assert missing.status_code == 404 and "999" in missing.json()["message"]
    assert served_by("../../etc/passwd").status_code == 400
    listed = http.get("/models").json()
    versions = {v["version"]: v for v in listed["versions"]}
    assert {endpoint["champion"], endpoint["other"]} <= set(versions)
    assert versions[endpoint["champion"]]["aliases"] == ["champion"]
    assert "val_mAP50-95" in versions[endpoint["champion"]]["metrics"]


def test_a_promotion_is_served_without_a_redeploy(http, endpoint, known_image):
    """Moving @champion in the registry moves the default model and the `champion` header within refresh_s."""
    import time

    from facemask.tracking import set_alias

    def versions() -> tuple[str, str]:
        data = known_image.read_bytes()
        default = http.post("/predict", params={"imgsz": 160}, content=data).json()["model"]["version"]
        named = http.post(
            "/predict", params={"imgsz": 160}, content=data, headers={"serve_multiplexed_model_id": "champion"}
        ).json()["model"]["version"]
        return default, named

    def converge(target: str) -> None:
        deadline = time.monotonic() + 60
        while versions() != (target, target):
            assert time.monotonic() < deadline, f"still {versions()} after moving @champion to {target}"
            time.sleep(0.5)

    name, champion, other = endpoint["name"], endpoint["champion"], endpoint["other"]
    assert versions() == (champion, champion)
    try:
        set_alias(name, "champion", other, tracking_uri=endpoint["tracking_uri"])
        converge(other)
    finally:
        set_alias(name, "champion", champion, tracking_uri=endpoint["tracking_uri"])
    converge(champion)


@pytest.mark.whole_machine(reason="whether a burst forms a batch depends on its requests' arrival times")
def test_concurrent_requests_are_batched(endpoint, known_image):
    """Requests that queue during a model call go into the next one together.

    With no batch wait, whether a burst forms a batch depends on arrival times: of three
    bursts of six, at least one must.
    """

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=endpoint["url"], timeout=60) as client:
            data = known_image.read_bytes()
            # imgsz 640: a model call long enough (~50 ms here) for the others to queue behind it.
            return await asyncio.gather(
                *[client.post("/predict", params={"imgsz": 640}, content=data) for _ in range(6)]
            )

    sizes = []
    for _ in range(3):
        responses = asyncio.run(burst())
        assert all(r.status_code == 200 for r in responses), [r.status_code for r in responses]
        sizes.append(max(r.json()["timings"]["batch_size"] for r in responses))
        if sizes[-1] >= 2:
            break
    assert max(sizes) >= 2, sizes


@pytest.mark.whole_machine(reason="how many of a flood are served against refused depends on the replica's speed")
def test_overload_gets_quick_503s_not_hangs(endpoint, known_image):
    big = io.BytesIO()
    Image.open(known_image).resize((640, 480)).save(big, format="JPEG")

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=endpoint["url"], timeout=httpx.Timeout(60), limits=httpx.Limits(max_connections=60)
        ) as client:
            return await asyncio.gather(
                *[client.post("/predict", params={"imgsz": 320}, content=big.getvalue()) for _ in range(40)]
            )

    responses = asyncio.run(asyncio.wait_for(flood(), timeout=90))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 10 and codes.count(200) >= 4, codes
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.json()["error"] == "overloaded" and rejected.headers["retry-after"]
    assert_serves(httpx.Client(base_url=endpoint["url"], timeout=60), known_image)


def test_a_deployment_that_requires_a_key_fails_closed(endpoint, known_image, monkeypatch):
    """Serve may build the app on a node without FACEMASK_API_KEY (a RayService's build task, a
    cluster.yaml head): with require_api_key, a replica takes the key from its own environment, as
    a pod's comes from the Secret, and asks every request for it; a replica with no key, or with
    the Secret's placeholder, does not start, so the endpoint never answers without a key."""
    from ray import serve

    from facemask.serving import build_app
    from tests.kuberay import the_secret

    monkeypatch.delenv("FACEMASK_API_KEY", raising=False)
    base = {"backend": "simulated-gpu", "require_api_key": True, **LIMITS}

    def app(env: dict[str, str]):
        options = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25, "runtime_env": {"env_vars": env}}}
        return build_app({**base, "deployment_options": options})

    data = known_image.read_bytes()
    serve.run(app({"FACEMASK_API_KEY": API_KEY}), name="keyed", route_prefix="/keyed")
    try:
        url = f"{endpoint['url']}/keyed/predict"
        assert httpx.post(url, content=data, timeout=60).status_code == 401
        assert (
            httpx.post(url, content=data, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        )
    finally:
        serve.delete("keyed")
    placeholder = the_secret()["FACEMASK_API_KEY"]
    for env, why in (({}, "has no FACEMASK_API_KEY"), ({"FACEMASK_API_KEY": placeholder}, "is the placeholder")):
        with pytest.raises(RuntimeError, match="Deploying application unkeyed failed"):
            serve.run(app(env), name="unkeyed", route_prefix="/unkeyed")
        # Serve keeps the replica's own error on the deployment.
        status = serve.status().applications["unkeyed"].deployments["Facemask"]
        assert why in status.message, status.message[-2000:]
        serve.delete("unkeyed")
        assert httpx.post(f"{endpoint['url']}/unkeyed/predict", content=data, timeout=60).status_code == 404
    # Where the app is built, a placeholder is refused at once.
    monkeypatch.setenv("FACEMASK_API_KEY", placeholder)
    with pytest.raises(ConfigError, match="is the placeholder"):
        app({})


def test_api_key_on_and_off(endpoint, known_image):
    secured = f"{endpoint['url']}/secured"
    data = known_image.read_bytes()
    assert httpx.get(f"{secured}/healthz").status_code == 200
    for path in ("/predict", "/predict/image"):
        denied = httpx.post(f"{secured}{path}", content=data, timeout=60)
        assert denied.status_code == 401 and denied.json()["error"] == "unauthorized"
        wrong = httpx.post(f"{secured}{path}", content=data, headers={"Authorization": "Bearer nope"}, timeout=60)
        assert wrong.status_code == 401
    assert httpx.get(f"{secured}/models").status_code == 401
    # The key is checked before the parameters: a caller without it learns nothing about them.
    assert httpx.post(f"{secured}/predict", params={"conf": 5}, content=data, timeout=60).status_code == 401
    keyed = httpx.post(
        f"{secured}/predict",
        params={"conf": 5},
        content=data,
        timeout=60,
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert keyed.status_code == 422
    ok = httpx.post(f"{secured}/predict", content=data, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["model"]["version"] == endpoint["champion"]
    # The open app ignores keys entirely.
    assert httpx.post(f"{endpoint['url']}/predict", content=data, timeout=60).status_code == 200
    # The client sends FACEMASK_API_KEY.
    assert Client(secured, api_key=API_KEY).predict(known_image)["model"]["version"] == endpoint["champion"]
    with pytest.raises(EndpointError) as denied_client:
        Client(secured, api_key="").predict(known_image)
    assert denied_client.value.status == 401


@pytest.mark.whole_machine(reason="the 408 must come within seconds of the proxy's body timeout")
def test_a_body_that_never_arrives_gets_408_and_frees_the_connection(endpoint, known_image):
    """A client that declares 100 kB and sends 10 bytes: the proxy's guard answers 408 after its
    body_timeout_s, and no replica ever held the request."""
    import json
    import socket
    import time

    from tests.services import PROXY

    port = int(endpoint["url"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"\xff\xd8" * 5
        )
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "body_timeout"
    assert PROXY["body_timeout_s"] - 0.5 < waited < PROXY["body_timeout_s"] + 10
    assert_serves(httpx.Client(base_url=endpoint["url"], timeout=60), known_image)


def test_client_and_query_command(endpoint, known_image, tmp_path):
    from click.testing import CliRunner

    from facemask.cli import main

    client = Client(endpoint["url"])
    assert client.health() == {"status": "ok"}
    answer = client.predict(known_image, conf=0, imgsz=160, max_det=2)
    assert len(answer["detections"]) == 2 and sum(answer["counts"].values()) == 2
    assert client.models()["default"].endswith("@champion")
    saved = tmp_path / "annotated.jpg"
    result = CliRunner().invoke(
        main,
        ["query", str(known_image), "--url", endpoint["url"], "--save", str(saved)]
        + "--conf 0 --imgsz 160 --max-det 4".split(),
    )
    assert result.exit_code == 0, result.output
    assert "4 detections" in result.stdout and f"v{endpoint['champion']}" in result.stdout
    assert Image.open(saved).format == "JPEG"
    as_json = CliRunner().invoke(
        main,
        ["query", str(known_image), "--url", endpoint["url"], "--json", *"--conf 0 --imgsz 160 --max-det 3".split()],
    )
    answer = json.loads(as_json.stdout)
    assert (
        as_json.exit_code == 0 and len(answer["detections"]) == 3 and answer["model"]["version"] == endpoint["champion"]
    )
    # --deadline: nothing will come up there, so no need to wait out the default 45 s of retries
    nobody = f"http://127.0.0.1:{free_port()}"
    offline = CliRunner().invoke(main, ["query", str(known_image), "--url", nobody, "--deadline", "2"])
    assert offline.exit_code == 1 and "facemask serve" in offline.stderr  # not the user's input: 1, not 2


def test_client_retries_503_with_backoff(known_image):
    """A real HTTP server that answers 503 twice, then 200: the client waits and gets the answer."""
    import http.server
    import json
    import threading

    calls = []
    script: list[tuple[int, bytes]] = []  # answers to give before the 200s

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            calls.append(self.path)
            if script:
                status, payload = script.pop(0)
            else:
                status, body = (
                    (503, {"error": "overloaded", "message": "busy"}) if len(calls) < 3 else (200, {"ok": True})
                )
                payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert Client(url, backoff_s=0.05).predict(known_image) == {"ok": True}
        assert len(calls) == 3
        calls.clear()
        with pytest.raises(EndpointError) as err:
            Client(url, retries=1, backoff_s=0.05).predict(known_image)
        assert err.value.status == 503 and len(calls) == 2
        # The proxy's bare 500 for a request lost with its replica is sent again; the app's JSON 500 is not.
        calls.clear()
        script.extend([(500, b"Internal Server Error"), (200, b'{"ok": true}')])
        assert Client(url, backoff_s=0.05).predict(known_image) == {"ok": True} and len(calls) == 2
        calls.clear()
        script.append((500, b'{"error": "bug", "message": "boom"}'))
        with pytest.raises(EndpointError) as err:
            Client(url, backoff_s=0.05).predict(known_image)
        assert err.value.status == 500 and err.value.error == "bug" and len(calls) == 1
    finally:
        server.shutdown()
