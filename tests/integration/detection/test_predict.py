"""Batch inference with Ray Data over folders and videos, and the ONNX export and backend."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facemask.cli import main
from facemask.core.classes import CLASS_NAMES
from facemask.detection.detector import ModelNotFoundError, load_detector

pytestmark = pytest.mark.integration


def test_predict_folder_with_ray_data(ray_local, registered_detector, synth_source, tmp_path):
    source = tmp_path / "photos"
    images = sorted((synth_source / "images").iterdir())[:8]
    for i, image in enumerate(images):
        target = source / ("nested" if i >= 6 else "") / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
    (source / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (source / "dangling.jpg").symlink_to(source / "gone.jpg")
    (source / "looping.png").symlink_to(source / "looping.png")
    (source / "folder.jpg").mkdir()
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["predict", str(source), "--model-uri", str(registered_detector["weights"]), "--out", str(out)]
        + "--conf 0 --imgsz 160 --max-det 5 --batch 3 --concurrency 2 --json".split(),
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["items"] == 12 and answer["skipped"] == 4 and "skipped 4 unreadable" in result.stderr
    assert answer["files"]["detections"] == str(out / "detections.jsonl") and sum(answer["detections"].values()) == 40
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [line["source"] for line in lines] == sorted(str(p.relative_to(source)) for p in source.rglob("*.*"))
    broken = {line["source"]: line["error"] for line in lines if "error" in line}
    assert set(broken) == {"broken.jpg", "dangling.jpg", "looping.png", "folder.jpg"}
    assert "truncated or corrupt" in broken["broken.jpg"] and "folder" in broken["folder.jpg"]
    assert "broken or looping link" in broken["dangling.jpg"] and "broken or looping link" in broken["looping.png"]
    assert not any("pi_heif" in reason or "No module" in reason for reason in broken.values())
    good = [line for line in lines if "error" not in line]
    assert len(good) == 8 and all(len(line["detections"]) == 5 for line in good)
    for line in good:
        annotated = (out / "annotated" / line["source"]).with_suffix(".jpg")
        with Image.open(source / line["source"]) as original, Image.open(annotated) as drawn:
            assert drawn.size == original.size == (line["width"], line["height"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 12 and {s["file"] for s in summary["skipped"]} == set(broken)
    assert sum(summary["detections"].values()) == 40

    detector = load_detector(str(registered_detector["weights"]))
    first = good[0]
    expected = detector.predict([Image.open(source / first["source"])], conf=0, imgsz=160, max_det=5)[0]
    assert [d["confidence"] for d in first["detections"]] == pytest.approx([d.confidence for d in expected], abs=1e-3)


def test_predict_video(ray_local, registered_detector, synth_source, tmp_path):
    import cv2

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    for image in sorted((synth_source / "images").iterdir())[:12]:
        frame = cv2.resize(cv2.imread(str(image)), (160, 120))
        writer.write(frame)
    writer.release()
    out = tmp_path / "video-out"
    from facemask.video.batch import PredictConfig, predict

    result = predict(
        PredictConfig(
            source=video,
            model_uri=str(registered_detector["weights"]),
            out=out,
            conf=0,
            imgsz=160,
            max_det=3,
            frames_per_task=5,
            concurrency=2,
            tracking_uri=registered_detector["tracking_uri"],
        )
    )
    assert result.kind == "video" and result.items == 12 and not result.skipped
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(12))
    assert lines[5]["time_s"] == pytest.approx(0.5)
    # max_det 3 per frame, less boxes on one face; each followed by the video's one tracker
    assert all(1 <= len(line["detections"]) <= 3 and all("track_id" in d for d in line["detections"]) for line in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["people"]["frames"] == 12 and set(summary["people"]["by_class"]) == set(CLASS_NAMES)
    capture = cv2.VideoCapture(str(out / "annotated.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 12 and capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 160


def test_export_onnx_logs_it_and_the_onnx_backend_agrees(registered_detector, known_image, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered_detector["tracking_uri"])
    name, other = registered_detector["name"], registered_detector["other"]
    tracking_uri = f"models:/{name}/{other}"
    result = CliRunner().invoke(main, ["export", "--model-uri", tracking_uri, "--imgsz", "160", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["artifact_uri"].startswith(f"runs:/{registered_detector['run_id']}/onnx/")
    assert answer["version"] == other and answer["path"].endswith(".onnx")

    from mlflow import MlflowClient

    tags = MlflowClient(registered_detector["tracking_uri"]).get_model_version(name, other).tags
    assert tags["onnx_artifact"].endswith(".onnx") and tags["onnx_imgsz"] == "160"
    store = registered_detector["tracking_uri"]
    onnx = load_detector(tracking_uri, backend="onnx", tracking_uri=store)
    assert onnx.info.weights.endswith(".onnx") and onnx.info.version == other
    torch_model = load_detector(tracking_uri, tracking_uri=store)
    image = Image.open(known_image)
    for size in (160, 224):  # the export takes any size and batch
        got = onnx.predict([image, image], conf=0, imgsz=size, max_det=10)
        want = torch_model.predict([image], conf=0, imgsz=size, max_det=10)[0]
        assert len(got) == 2 and len(got[0]) == 10
        # Near-equal scores of an untrained model may swap places; match each box instead of the order.
        for d in got[0][:5]:
            assert any(
                w.class_id == d.class_id
                and abs(w.confidence - d.confidence) < 1e-3
                and np.allclose(w.box, d.box, atol=1.0)
                for w in want
            ), d

    with pytest.raises(ModelNotFoundError, match="facemask export"):
        load_detector(f"models:/{name}/{registered_detector['champion']}", backend="onnx", tracking_uri=store)
    missing = CliRunner().invoke(
        main,
        [
            "predict",
            str(known_image.parent),
            "--model-uri",
            f"models:/{name}/999",
            "--out",
            str(tmp_path / "x"),
            "--engine",
            "local",
        ],
    )
    assert missing.exit_code == 2 and "999" in missing.stderr


def test_a_result_does_not_depend_on_its_batch_mates(registered_detector, synth_source):
    """Mixed photo sizes in one call give each image exactly what it gets alone (Serve batches strangers)."""
    detector = load_detector(str(registered_detector["weights"]))
    images = [Image.open(p).convert("RGB") for p in sorted((synth_source / "images").iterdir())[:5]]
    images.append(images[0].resize((images[0].width // 2, images[0].height)))  # another aspect ratio
    together = detector.predict(images, conf=0, imgsz=160, max_det=8)
    for image, batched in zip(images, together):
        alone = detector.predict([image], conf=0, imgsz=160, max_det=8)[0]
        assert [d.class_id for d in batched] == [d.class_id for d in alone]
        assert np.allclose([d.box for d in batched], [d.box for d in alone], atol=0.05)
        assert np.allclose([d.confidence for d in batched], [d.confidence for d in alone], atol=1e-4)
        assert all(
            0 <= d.box[0] <= d.box[2] <= image.width and 0 <= d.box[1] <= d.box[3] <= image.height for d in alone
        )
