"""What the endpoint gives back (facemask.serving.production): sampling's rule checked where the
app is built, boxes in the kept image's pixels, one sampler and one drift monitor per model
version at its own thresholds and reference, and `facemask serve --sampling` refusing a bad file
by name before anything starts."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from PIL import Image

from facemask.core.errors import ConfigError
from facemask.core.operating_point import OperatingPoint
from facemask.serving.production import EndpointDrift, EndpointSampling, checked_sampling, in_model_pixels
from tests.services import wait_until


def detector(uri: str, point: OperatingPoint | None = None):
    return SimpleNamespace(info=SimpleNamespace(uri=uri), point=point)


def answer(*detections: tuple[str, float, float], version: str = "3") -> dict:
    """An answer as the endpoint builds it: (label, confidence, x1) faces 20 px wide, in the upload's pixels."""
    found = [
        {"label": label, "confidence": conf, "box": {"x1": x1, "y1": 10.0, "x2": x1 + 20, "y2": 30.0}}
        for label, conf, x1 in detections
    ]
    return {"detections": found, "model": {"version": version, "uri": f"models:/m/{version}"}}


def test_a_bad_rule_stops_the_build_naming_the_field_and_the_folder_is_made_absolute(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="faces"):
        checked_sampling({"band": 0.1}, None)
    with pytest.raises(ConfigError, match="per_hour"):
        checked_sampling({"faces": "blur", "per_hour": 0}, None)
    monkeypatch.chdir(tmp_path)
    rule, folder = checked_sampling({"faces": "keep"}, "pool")
    assert rule == {"faces": "keep"} and folder == str(tmp_path / "pool")
    assert checked_sampling(None, None) == (None, None)


def test_boxes_go_to_the_kept_images_pixels():
    moved = in_model_pixels({"label": "with_mask", "box": {"x1": 100.0, "y1": 50.0, "x2": 300.0, "y2": 250.0}}, 2.5)
    assert moved["box"] == {"x1": 40.0, "y1": 20.0, "x2": 120.0, "y2": 100.0}


def test_each_version_is_sampled_at_its_own_thresholds_and_kept_images_carry_pre_labels(tmp_path):
    """Version 1 answers at 0.6 for with_mask, version 2 has no point (the default 0.25): a face at
    0.55 is near version 1's threshold only."""
    sampling = EndpointSampling({"faces": "keep", "band": 0.1, "random_share": 0}, str(tmp_path), 0.25)
    point = OperatingPoint(imgsz=320, conf={"with_mask": 0.6, "without_mask": 0.3, "mask_weared_incorrect": 0.2})
    image = Image.new("RGB", (64, 48), (90, 120, 150))
    one, two = detector("models:/m/1", point), detector("models:/m/2")
    assert sampling.offer("predict", one, image, 2.0, answer(("with_mask", 0.55, 40.0), version="1")) == ["uncertain"]
    assert sampling.offer("predict", two, image, 2.0, answer(("with_mask", 0.55, 40.0), version="2")) == []
    wait_until(lambda: len(list((tmp_path / "predict").glob("*.json"))) == 1, 10, "the kept image written")
    meta = json.loads(next((tmp_path / "predict").glob("*.json")).read_text())
    assert (
        meta["model_version"] == "1"
        and meta["reasons"] == ["uncertain"]
        and (meta["width"], meta["height"])
        == (
            64,
            48,
        )
    )
    assert meta["detections"] == [
        {"label": "with_mask", "confidence": 0.55, "box": {"x1": 20.0, "y1": 5.0, "x2": 30.0, "y2": 15.0}}
    ]
    counts = sampling.counts()
    assert counts["frames"] == 2 and counts["kept"] == 1 and counts["written"] == 1
    sampling.close()


def test_live_faces_under_the_threshold_count_for_the_band_but_are_no_pre_labels(tmp_path):
    sampling = EndpointSampling({"faces": "blur", "band": 0.1, "random_share": 0}, str(tmp_path), 0.5)
    image = Image.new("RGB", (64, 48))
    shown = answer(("with_mask", 0.9, 0.0))
    shown["detections"][0]["track_id"] = "1:7"
    weak = [{"label": "without_mask", "confidence": 0.45, "box": {"x1": 30.0, "y1": 0.0, "x2": 40.0, "y2": 9.0}}]
    assert sampling.offer("live", detector("models:/m/3"), image, 1.0, shown, weak) == ["uncertain"]
    wait_until(lambda: list((tmp_path / "live").glob("*.json")), 10, "the kept frame written")
    meta = json.loads(next((tmp_path / "live").glob("*.json")).read_text())
    assert [d["label"] for d in meta["detections"]] == ["with_mask"] and meta["faces"] == "blur"
    sampling.close()


def test_serve_refuses_a_sampling_file_without_the_section_or_with_a_bad_field(tmp_path):
    from facemask.cli import main

    empty, bad = tmp_path / "empty.yaml", tmp_path / "bad.yaml"
    empty.write_text("cameras: []\n")
    bad.write_text("sampling:\n  faces: keep\n  band: 3\n")
    for path, field in ((empty, "sampling"), (bad, "band")):
        run = CliRunner().invoke(main, ["serve", "--sampling", str(path)])
        assert run.exit_code == 2, run.output
        assert str(path) in run.output and field in run.output, run.output


def test_drift_is_per_version_against_the_reference_its_calibration_stored():
    from facemask.learning.drift import reference_of

    reference = reference_of([0] * 100, [0.9] * 100)  # on val it answered with_mask at 0.9
    conf = {"with_mask": 0.5, "without_mask": 0.5, "mask_weared_incorrect": 0.5}
    calibrated = detector("models:/m/4", OperatingPoint(320, conf, scores={"reference": reference}))
    drift = EndpointDrift(0.25)
    bare = [
        {"label": "without_mask", "confidence": 0.55, "box": {}},
        {"label": "with_mask", "confidence": 0.2, "box": {}},
    ]
    for i in range(250):
        drift.update("predict", calibrated, "4", bare, 1000.0 + i)
    figures = drift.monitors["models:/m/4"].figures("predict", 1250.0)
    assert figures["against"] == "val" and figures["answers"] == 250  # the face under 0.5 is no answer
    assert figures["class_mix"] > 0.25 and figures["score"] > 0.25
    drift.update("predict", detector("models:/m/5"), "5", bare, 1000.0)  # no point: its own first hour, not yet
    assert drift.monitors["models:/m/5"].figures("predict", 1000.0) is None
    assert set(drift.set_at) == {"endpoint/predict/v4", "endpoint/predict/v5"}
