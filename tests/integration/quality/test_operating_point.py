"""A version's operating point (calibrated on val, stored with it) as the default of predict and Serve,
and an ensemble of two versions registered, scored, served and answering over HTTP."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner

from facemask.cli import main
from facemask.core.classes import CLASS_NAMES
from facemask.core.modelref import OPERATING_POINT_TAG
from facemask.core.operating_point import OperatingPoint
from facemask.detection.detector import EnsembleDetector, load_detector
from tests.services import DEPLOYMENT, LIMITS, free_port

pytestmark = pytest.mark.integration

# Only faces with masks, at any confidence: an untrained model's answer shrinks to one class.
MASKS_ONLY = OperatingPoint(224, {"with_mask": 0.001, "without_mask": 1.0, "mask_weared_incorrect": 1.0}, rule="test")


@pytest.fixture(scope="module")
def versions(registered_detector) -> dict:
    """Two versions of a registered model of this module's own (the session's model is shared:
    its versions must not gain a point or a sibling here)."""
    from facemask.tracking import log_and_register

    name, uri, run = "point-test-detector", registered_detector["tracking_uri"], registered_detector["run_id"]
    best = registered_detector["weights"]
    first = log_and_register(run, best, {"note": "point test"}, uri, name=name)
    other = log_and_register(run, best.parent / "last.pt", {"note": "point test"}, uri, name=name)
    return {"name": name, "champion": first, "other": other, "tracking_uri": uri}


@pytest.fixture()
def store(versions, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", versions["tracking_uri"])
    return versions


@pytest.fixture(scope="module")
def serve_url(ray_local):
    """Serve on a port of this module's; each test runs its app under /point-test and deletes it."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}/point-test"
    finally:
        serve.shutdown()


def served(url: str, args: dict) -> str:
    from ray import serve

    from facemask.serving import build_app

    base = {"max_batch_size": 4, "deployment_options": DEPLOYMENT, **LIMITS}
    serve.run(build_app({**base, **args}), name="point-test", route_prefix="/point-test")
    return url


def test_calibrated_point_is_stored_and_is_the_default_of_predict_and_serve(
    serve_url, store, tiny_data, known_image, tmp_path
):
    from ray import serve

    from facemask.quality.calibrate import store as store_point
    from facemask.tracking import client

    uri = f"models:/{store['name']}/{store['other']}"
    result = CliRunner().invoke(
        main, ["calibrate", "--model-uri", uri, "--data", str(tiny_data), "--sizes", "160,224", "--json"]
    )
    assert result.exit_code == 0, result.output
    chosen = json.loads(result.stdout)
    assert chosen["version"] == store["other"] and chosen["operating_point"]["imgsz"] in (160, 224)
    assert set(chosen["operating_point"]["conf"]) == set(CLASS_NAMES) and set(chosen["val_mAP50"]) == {"160", "224"}
    tags = client(store["tracking_uri"]).get_model_version(store["name"], store["other"]).tags
    assert OperatingPoint.from_tag(tags[OPERATING_POINT_TAG]).describe() == chosen["operating_point"]

    # A point whose effect shows on an untrained model: only masked faces, at any confidence.
    store_point(uri, MASKS_ONLY, store["tracking_uri"])
    detector = load_detector(uri, tracking_uri=store["tracking_uri"])
    assert detector.imgsz == 224 and detector.point == MASKS_ONLY
    at_point, at_conf = detector.predict([known_image])[0], detector.predict([known_image], conf=0.001)[0]
    assert at_point and {d.label for d in at_point} == {"with_mask"}
    assert len({d.label for d in at_conf}) > 1, "a request's conf applies to every class"

    out = tmp_path / "predicted"
    args = ["predict", str(known_image.parent), "--model-uri", uri, "--out", str(out), "--engine", "local", "--json"]
    assert CliRunner().invoke(main, args).exit_code == 0
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    labels = {d["label"] for line in lines for d in line["detections"]}
    assert labels == {"with_mask"}, "predict without --conf answers at the version's point"

    url = served(serve_url, {"model_uri": uri, "tracking_uri": store["tracking_uri"]})
    try:
        body = known_image.read_bytes()
        default = httpx.post(f"{url}/predict", content=body, timeout=60).json()
        assert default["model"]["operating_point"] == MASKS_ONLY.describe()
        assert default["detections"] and {d["label"] for d in default["detections"]} == {"with_mask"}
        asked = httpx.post(f"{url}/predict", params={"conf": 0.001}, content=body, timeout=60).json()
        assert len({d["label"] for d in asked["detections"]}) > 1
        assert httpx.get(f"{url}/model", timeout=30).json()["operating_point"]["imgsz"] == 224
    finally:
        serve.delete("point-test")


def test_an_ensemble_registers_serves_and_answers_over_http(serve_url, store, tiny_data, known_image):
    from ray import serve

    members = [f"models:/{store['name']}/{store['champion']}", f"models:/{store['name']}/{store['other']}"]
    args = ["ensemble", *members, "--data", str(tiny_data), "--imgsz", "160", "--registered-model", store["name"]]
    result = CliRunner().invoke(main, args + ["--resamples", "100", "--json"])
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    version = made["version"]
    assert set(made["test"]) == set(members) and set(made["ms_per_image"]) == {"ensemble", *members}
    assert all(len(gain["overall"]["mAP50"]) == 3 for gain in made["test"].values())

    uri = f"models:/{store['name']}/{version}"
    detector = load_detector(uri, tracking_uri=store["tracking_uri"])
    assert isinstance(detector, EnsembleDetector) and len(detector.members) == 2
    # The members are untrained: their scores are tiny, hence the low threshold.
    fused = detector.predict([known_image], conf=0.001, imgsz=160)[0]
    alone = [m.predict([known_image], conf=0.0005, imgsz=160)[0] for m in detector.members]
    # One fused box per cluster of the members' boxes: never more than they found together.
    assert 0 < len(fused) <= sum(len(a) for a in alone)

    scored = CliRunner().invoke(
        main,
        ["evaluate", "--model-uri", uri, "--data", str(tiny_data), "--imgsz", "160", "--resamples", "100"] + ["--json"],
    )
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["version"] == version

    url = served(serve_url, {"model_uri": uri, "tracking_uri": store["tracking_uri"]})
    try:
        answer = httpx.post(
            f"{url}/predict", params={"conf": 0.001, "imgsz": 160}, content=known_image.read_bytes(), timeout=60
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"]["version"] == version and body["detections"]
        assert min(d["confidence"] for d in body["detections"]) >= 0.001
    finally:
        serve.delete("point-test")
