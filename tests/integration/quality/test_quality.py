"""The quality tools on real files: the repeat-factor list from `prepare` and what training sees
of it, and an evaluation of a plain VOC folder with its intervals logged to MLflow."""

from __future__ import annotations

import math
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from facemask.core.errors import ConfigError
from facemask.core.settings import ReadConfig
from tests.services import tiny_training

pytestmark = pytest.mark.integration


def test_prepare_repeat_threshold_lists_rare_images_more_often_and_training_sees_them(synth_source, tmp_path):
    from facemask.core.settings import AugmentConfig, PrepareConfig
    from facemask.data.pipeline import prepare
    from facemask.training.train import train

    result = prepare(
        PrepareConfig(
            source=synth_source,
            out=tmp_path / "yolo",
            engine="local",
            plots=False,
            repeat_threshold=0.9,
            augment=AugmentConfig(balance_ratio=0),
        )
    )
    repeat = result.manifest["repeat"]
    doc = yaml.safe_load(result.data_yaml.read_text())
    assert doc["train"] == "train.txt" and doc["val"] == "images/val" and doc["test"] == "images/test"
    listed = Counter(Path(line).name for line in (tmp_path / "yolo" / "train.txt").read_text().splitlines())
    train_images = {p.name for p in (tmp_path / "yolo" / "images" / "train").iterdir()}
    assert set(listed) == train_images and sum(listed.values()) == repeat["listed"] > repeat["images"]
    assert {k: v for k, v in listed.items() if v > 1} == repeat["repeated"]
    assert max(repeat["class_factor"].values()) > 1.0
    assert not any(name in train_images for name in splits(tmp_path / "yolo", "val", "test"))

    seen: list[Counter] = []

    def count(trainer) -> None:
        seen.append(Counter(Path(f).name for f in trainer.train_loader.dataset.im_files))
        assert len(trainer.train_loader) == math.ceil(repeat["listed"] / 8)

    train(
        tiny_training(result.data_yaml, tmp_path / "runs", tracking=False, overrides={"mosaic": 0.0}),
        callbacks={"on_train_epoch_start": [count]},
    )
    assert seen == [listed]  # each image as many times as train.txt lists it, in one epoch


def splits(root: Path, *names: str) -> set[str]:
    return {p.name for name in names for p in (root / "images" / name).iterdir()}


def test_evaluate_a_voc_folder_logs_intervals_and_counts_dropped_unknown_classes(
    registered_detector, synth_source, tmp_path
):
    from facemask.quality.evaluate import HELDOUT, evaluate

    folder = tmp_path / "my-photos"
    shutil.copytree(synth_source, folder)
    xml = sorted((folder / "annotations").iterdir())[0]
    xml.write_text(
        xml.read_text()
        .replace("<name>with_mask</name>", "<name>face_shield</name>", 1)
        .replace("<name>without_mask</name>", "<name>face_shield</name>", 1)
    )
    unknown = xml.read_text().count("face_shield")
    assert unknown >= 1
    model = f"models:/{registered_detector['name']}/{registered_detector['other']}"
    scoring = {"imgsz": 160, "device": "cpu", "resamples": 200, "tracking_uri": registered_detector["tracking_uri"]}
    with pytest.raises(ConfigError, match=rf"face_shield \({unknown}\)"):  # a label nobody mapped stops it
        evaluate(model, folder, **scoring)
    result = evaluate(model, folder, read=ReadConfig(drop_unknown=True), **scoring)

    assert result.split == HELDOUT and result.intervals.images == len(list((folder / "images").iterdir()))
    assert result.problems["counts"] == {"dropped_box": {"unknown_class": unknown}}
    objects = result.intervals.objects
    assert sum(objects.values()) == sum(xml_objects(folder).values()) - unknown
    client = MlflowClient(registered_detector["tracking_uri"])
    metrics = client.get_run(registered_detector["run_id"]).data.metrics
    for name in ("mAP50", "mAP50_low", "mAP50_high", "mAP50-95_low", "mAP50_low/without_mask"):
        assert f"{HELDOUT}_bootstrap/{name}" in metrics, sorted(metrics)
    assert metrics[f"{HELDOUT}_bootstrap/objects/with_mask"] == objects["with_mask"]
    low, high = metrics[f"{HELDOUT}_bootstrap/mAP50_low"], metrics[f"{HELDOUT}_bootstrap/mAP50_high"]
    assert 0 <= low <= metrics[f"{HELDOUT}_bootstrap/mAP50"] <= high <= 1
    artifacts = {a.path for a in client.list_artifacts(registered_detector["run_id"], f"evaluation/{HELDOUT}")}
    assert f"evaluation/{HELDOUT}/predictions.npz" in artifacts
    # The prepared test split's tags, which the gate reads, are not touched by a folder's score.
    tags = client.get_model_version(registered_detector["name"], registered_detector["other"]).tags
    assert f"{HELDOUT}_mAP50-95" in tags and "test.predictions" not in tags


def xml_objects(folder: Path) -> Counter:
    return Counter(
        line.strip()
        for f in (folder / "annotations").iterdir()
        for line in f.read_text().splitlines()
        if line.strip().startswith("<name>")
    )
