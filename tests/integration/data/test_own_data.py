"""A new user's own data, as docs/your-own-data.md walks it: a CVAT "Ultralytics YOLO" export
whose classes are `mask`, `no_mask` and `mask_incorrect`, through prepare, train and evaluate,
every step run as the CLI with --json and its answer parsed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from facemask.cli import main
from facemask.data.voc import parse_annotation

pytestmark = pytest.mark.integration

TOOL_NAMES = {"with_mask": "mask", "without_mask": "no_mask", "mask_weared_incorrect": "mask_incorrect"}
CLASS_MAP = ",".join(f"{tool}={ours}" for ours, tool in TOOL_NAMES.items())


def cvat_yolo_export(voc: Path, out: Path) -> Path:
    """What CVAT's "Ultralytics YOLO Detection 1.0" export writes: data.yaml, images/train,
    labels/train and train.txt, the classes under the tool's own names."""
    names = list(TOOL_NAMES.values())
    (out / "images" / "train").mkdir(parents=True)
    (out / "labels" / "train").mkdir(parents=True)
    listed = []
    for xml in sorted((voc / "annotations").iterdir()):
        record = parse_annotation(xml, voc / "images").record
        image = out / "images" / "train" / Path(record.image).name
        shutil.copyfile(record.image, image)
        lines = []
        for b in record.boxes:
            cx, cy = (b.x1 + b.x2) / 2 / record.width, (b.y1 + b.y2) / 2 / record.height
            w, h = (b.x2 - b.x1) / record.width, (b.y2 - b.y1) / record.height
            lines.append(f"{names.index(TOOL_NAMES[b.label])} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
        (out / "labels" / "train" / f"{image.stem}.txt").write_text("".join(lines))
        listed.append(f"images/train/{image.name}\n")
    (out / "train.txt").write_text("".join(listed))
    (out / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "train.txt", "names": dict(enumerate(names))}))
    return out


def run_json(*args: str) -> dict:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads(result.stdout)


def test_a_cvat_yolo_export_goes_through_prepare_train_and_evaluate(synth_source, tracking, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export = cvat_yolo_export(synth_source, tmp_path / "cvat-export")
    synth = run_json("data", "synth", "--out", str(tmp_path / "held-out"), "--images", "12", "--seed", "7")
    assert synth["images"] == 12 and sum(synth["objects"].values()) > 0

    prepared = run_json(
        "data", "prepare", "--source", str(export), "--class-map", CLASS_MAP, "--out", str(tmp_path / "yolo")
    )
    assert prepared["inputs"]["format"] == "yolo" and prepared["problems"] == {}
    assert prepared["labels"]["no_mask"]["class"] == "without_mask"
    objects = {name: sum(s["objects"][name]["original"] for s in prepared["counts"].values()) for name in TOOL_NAMES}
    assert objects == {ours: prepared["labels"][tool]["objects"] for ours, tool in TOOL_NAMES.items()}

    trained = run_json(
        "train",
        "--data",
        prepared["data_yaml"],
        "--weights",
        "yolo26n.yaml",
        "--epochs",
        "1",
        "--imgsz",
        "160",
        "--experiment",
        tracking["experiment"],
    )
    assert trained["epochs"] == 1 and Path(trained["weights"]).is_file() and trained["model_uri"] is None
    assert trained["tracking_uri"] == tracking["uri"] and "val/mAP50" in trained["metrics"]

    # The user's held-out photos, exported by the same tool: the same class map reads them.
    held_out = cvat_yolo_export(tmp_path / "held-out", tmp_path / "held-out-export")
    scored = run_json(
        "evaluate",
        "--model-uri",
        trained["weights"],
        "--data",
        str(held_out),
        "--class-map",
        CLASS_MAP,
        "--imgsz",
        "160",
        "--resamples",
        "200",
    )
    assert scored["intervals"]["images"] == 12
    assert sum(scored["intervals"]["objects"].values()) == sum(synth["objects"].values())
    refused = CliRunner().invoke(main, ["evaluate", "--model-uri", trained["weights"], "--data", str(held_out)])
    assert refused.exit_code == 2 and "--class-map" in refused.stderr
