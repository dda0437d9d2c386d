"""A user's own data in the formats labelling tools export (YOLO folders, COCO JSON, VOC), read
through a class map; a label that means no class stops the run unless the user drops it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from facemask.cli import main
from facemask.core.errors import ConfigError, InputNotFoundError
from facemask.core.settings import AugmentConfig, PrepareConfig, ReadConfig
from facemask.data.pipeline import prepare, prepare_evaluation_set
from facemask.data.sources import detect_format, parse_class_map, suggest_class_map
from tests.unit.data.test_voc import add_image, add_xml, make_source, ok_xml

# A CVAT or Roboflow export's class names, and what they mean here.
TOOL_NAMES = ["mask", "no_mask", "mask_incorrect"]
TOOL_MAP = "mask=with_mask,no_mask=without_mask,mask_incorrect=mask_weared_incorrect"
NO_PASTING = AugmentConfig(balance_ratio=0)


def image(path: Path, size=(200, 150)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 60)).save(path)
    return path


def label_file(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def yolo_source(root: Path, splits: tuple[str, ...] = (), images: int = 12) -> Path:
    """A YOLO export of `images` images, one box each, cycling through the three tool labels;
    in split folders `images/<split>` when `splits` is given."""
    (root).mkdir(parents=True)
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images", "names": TOOL_NAMES}))
    for i in range(images):
        split = f"{splits[i % len(splits)]}/" if splits else ""
        image(root / "images" / f"{split}im{i}.jpg")
        label_file(root / "labels" / f"{split}im{i}.txt", [f"{i % 3} 0.25 0.4 0.2 0.3"])
    return root


def prepare_read(source: Path, out: Path, **read) -> dict:
    cfg = PrepareConfig(
        source=source, out=out, engine="local", plots=False, augment=NO_PASTING, read=ReadConfig(**read)
    )
    return prepare(cfg).manifest


def originals(manifest: dict) -> Counter:
    return Counter(
        {
            name: sum(split["objects"][name]["original"] for split in manifest["counts"].values())
            for name in ("with_mask", "without_mask", "mask_weared_incorrect")
        }
    )


def test_a_yolo_export_with_tool_labels_prepares_through_a_class_map(tmp_path):
    src = yolo_source(tmp_path / "cvat")
    image(src / "images" / "background.jpg")  # no label file: a picture with no face, as YOLO reads it
    label_file(
        src / "labels" / "im0.txt", ["0 0.25 0.4 0.2 0.3", "2 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3", "7 0.5 0.5 0.1 0.1"]
    )
    label_file(src / "labels" / "gone.txt", ["0 0.5 0.5 0.1 0.1"])
    assert detect_format(src) == "yolo"

    manifest = prepare_read(src, tmp_path / "out", class_map=tuple(parse_class_map(TOOL_MAP).items()))

    # 12 images with a box each, plus the polygon (mask_incorrect) in im0; class id 7 dropped.
    assert originals(manifest) == Counter(with_mask=4, without_mask=4, mask_weared_incorrect=5)
    assert manifest["inputs"]["format"] == "yolo" and manifest["inputs"]["images"] == 13
    assert manifest["labels"]["no_mask"] == {"objects": 4, "class": "without_mask"}
    problems = {(p["path"], p["kind"]) for p in manifest["problems"]["items"]}
    assert ("images/background.jpg", "no_label_file") in problems
    assert ("labels/gone.txt", "label_without_image") in problems
    assert ("labels/im0.txt object #3", "bad_box") in problems
    # The polygon became its bounding box: x 0.1..0.3 of 200 px, y 0.1..0.3 of 150 px.
    label = (tmp_path / "out" / "labels").rglob("im0.txt").__next__().read_text().splitlines()
    assert "2 0.200000 0.200000 0.200000 0.200000" in label


@pytest.mark.parametrize("layout", ["images/<split>", "<split>/images"])
def test_a_yolo_export_with_splits_is_pooled_and_split_again(tmp_path, layout):
    if layout == "images/<split>":
        src = yolo_source(tmp_path / "src", splits=("train", "val", "test"), images=30)
    else:  # Roboflow: train/images, train/labels, valid/...
        src = tmp_path / "src"
        src.mkdir()
        (src / "data.yaml").write_text(yaml.safe_dump({"names": {0: "mask", 1: "no_mask", 2: "mask_incorrect"}}))
        for i in range(30):
            split = ("train", "valid", "test")[i % 3]
            image(src / split / "images" / f"im{i}.jpg")
            label_file(src / split / "labels" / f"im{i}.txt", [f"{i % 3} 0.5 0.5 0.2 0.2"])

    manifest = prepare_read(src, tmp_path / "out", class_map=tuple(parse_class_map(TOOL_MAP).items()))

    counts = {name: split["images"]["original"] for name, split in manifest["counts"].items()}
    assert sum(counts.values()) == 30 and counts == {"train": 21, "val": 6, "test": 3}
    assert originals(manifest) == Counter(with_mask=10, without_mask=10, mask_weared_incorrect=10)
    assert manifest["problems"]["items"] == []


def coco_source(root: Path) -> Path:
    """CVAT's COCO layout (annotations/instances_default.json + images/): boxes, a crowd region,
    a polygon-only and an uncompressed-RLE-only annotation, and an unlisted image."""
    for i in range(10):
        image(root / "images" / f"p{i}.jpg")
    image(root / "images" / "unlisted.jpg")
    categories = [{"id": 1, "name": "mask"}, {"id": 2, "name": "no_mask"}, {"id": 3, "name": "mask_incorrect"}]
    images = [{"id": i + 1, "file_name": f"p{i}.jpg", "width": 200, "height": 150} for i in range(10)]
    images.append({"id": 99, "file_name": "missing.jpg", "width": 200, "height": 150})
    anns = [
        {"id": i + 1, "image_id": i + 1, "category_id": i % 3 + 1, "bbox": [10, 20, 40, 50], "iscrowd": 0}
        for i in range(10)
    ]
    anns += [
        {"id": 50, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "iscrowd": 1},
        {"id": 51, "image_id": 2, "category_id": 3, "segmentation": [[100, 10, 140, 10, 140, 60, 100, 60]]},
        # Columns 5..6 of a 150-row image, rows 20..29: runs of 10 ones at 5*150+20 and 6*150+20.
        {"id": 52, "image_id": 3, "category_id": 2, "segmentation": {"size": [150, 200], "counts": [770, 10, 140, 10]}},
        {"id": 53, "image_id": 4, "category_id": 2, "segmentation": {"size": [150, 200], "counts": "compressed"}},
    ]
    data = {"images": images, "annotations": anns, "categories": categories}
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_default.json").write_text(json.dumps(data))
    return root


def test_coco_with_crowd_and_segmentation_only_annotations(tmp_path):
    src = coco_source(tmp_path / "coco")
    assert detect_format(src) == "coco" and detect_format(src / "annotations" / "instances_default.json") == "coco"

    # The JSON file itself, its images found in images/ beside its folder.
    manifest = prepare_read(
        src / "annotations" / "instances_default.json",
        tmp_path / "out",
        class_map=tuple(parse_class_map(TOOL_MAP).items()),
    )

    # 10 boxes, + the polygon (mask_incorrect) and the RLE mask (no_mask); the crowd and the compressed RLE dropped.
    assert originals(manifest) == Counter(with_mask=4, without_mask=4, mask_weared_incorrect=4)
    kinds = Counter((p["kind"], p["action"]) for p in manifest["problems"]["items"])
    assert kinds == Counter(
        {
            ("crowd_box", "dropped_box"): 1,
            ("box_from_segmentation", "corrected"): 2,
            ("bad_box", "dropped_box"): 1,
            ("annotation_without_image", "skipped_file"): 1,
            ("image_without_annotation", "skipped_file"): 1,
        }
    )
    paths = {p["path"] for p in manifest["problems"]["items"]}
    assert "images/unlisted.jpg" in paths and "annotations/instances_default.json#99" in paths
    rle = next((tmp_path / "out" / "labels").rglob("p2.txt")).read_text().splitlines()
    # Box x 5..7, y 20..30 of 200x150 (beside the plain box of p2).
    assert "1 0.030000 0.166667 0.010000 0.066667" in rle


def test_voc_with_a_class_map_and_an_ignored_label(tmp_path):
    src = make_source(tmp_path / "voc")
    for i in range(12):
        add_image(src, f"v{i}.png")
        boxes = ((TOOL_NAMES[i % 3], (10, 10, 60, 70)), ("person", (80, 10, 150, 140)))
        add_xml(src, f"v{i}", ok_xml(f"v{i}.png", boxes=boxes))
    class_map = tuple(parse_class_map(TOOL_MAP + ",person=ignore").items())

    manifest = prepare_read(src, tmp_path / "out", class_map=class_map)

    assert originals(manifest) == Counter(with_mask=4, without_mask=4, mask_weared_incorrect=4)
    assert manifest["problems"]["counts"] == {"dropped_box": {"ignored_class": 12}}
    assert manifest["labels"]["person"] == {"objects": 12, "class": "ignore"}
    assert manifest["config"]["read"]["class_map"]["mask"] == "with_mask"


def test_an_unmapped_label_stops_with_every_label_counted_unless_dropped(tmp_path):
    src = yolo_source(tmp_path / "src")
    with pytest.raises(ConfigError) as stop:
        prepare_read(src, tmp_path / "out")
    message = str(stop.value)
    assert "3 label(s) with no class" in message and "mask (4), mask_incorrect (4), no_mask (4)" in message
    guessed = "--class-map mask=with_mask,mask_incorrect=mask_weared_incorrect,no_mask=without_mask"
    assert guessed in message and "--drop-unknown" in message  # the fix, guessed from the names
    assert not (tmp_path / "out").exists()

    run = CliRunner().invoke(
        main, ["data", "prepare", "--source", str(src), "--out", str(tmp_path / "o"), "--engine", "local"]
    )
    assert run.exit_code == 2 and run.output.count("\n") == 2  # the engine line, then the one-line error
    assert run.output.splitlines()[-1].startswith("error: ") and "no_mask (4)" in run.output

    # Mapping two of them and dropping the third: counted, not silent.
    manifest = prepare_read(
        src, tmp_path / "dropped", class_map=(("mask", "with_mask"), ("no_mask", "without_mask")), drop_unknown=True
    )
    assert originals(manifest) == Counter(with_mask=4, without_mask=4, mask_weared_incorrect=0)
    assert manifest["problems"]["counts"] == {"dropped_box": {"unknown_class": 4}}


def test_evaluation_sets_read_every_format(tmp_path):
    mapping = ReadConfig(class_map=tuple(parse_class_map(TOOL_MAP).items()))
    sources = {
        "yolo": yolo_source(tmp_path / "yolo"),
        "coco": coco_source(tmp_path / "coco") / "annotations" / "instances_default.json",
    }
    for name, source in sources.items():
        data, problems = prepare_evaluation_set(source, tmp_path / f"eval-{name}", mapping)
        manifest = json.loads((data.parent / "manifest.json").read_text())
        assert manifest["kind"] == "evaluation"
        assert sum(manifest["counts"]["test"]["images"].values()) == (12 if name == "yolo" else 10)
    with pytest.raises(ConfigError, match="no_mask"):
        prepare_evaluation_set(sources["yolo"], tmp_path / "eval-unmapped")


def test_class_map_parsing_and_the_layouts_it_does_not_know(tmp_path):
    assert parse_class_map("a=with_mask, b = ignore") == {"a": "with_mask", "b": "ignore"}
    (tmp_path / "map.yaml").write_text("Mask: with_mask\nNoMask: without_mask\n")
    assert parse_class_map(str(tmp_path / "map.yaml")) == {"Mask": "with_mask", "NoMask": "without_mask"}
    with pytest.raises(ConfigError, match="'mask' is not a class"):
        parse_class_map("face=mask")
    with pytest.raises(ConfigError, match="expected LABEL=CLASS"):
        parse_class_map("face")
    assert suggest_class_map(["Mask", "no-mask", "without mask", "mask_weared_incorrect", "Incorrect Mask", "hat"]) == {
        "Mask": "with_mask",
        "no-mask": "without_mask",
        "without mask": "without_mask",
        "mask_weared_incorrect": "mask_weared_incorrect",
        "Incorrect Mask": "mask_weared_incorrect",
    }
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json: not valid JSON"):  # a user's mistake, not a crash
        prepare_read(tmp_path / "broken.json", tmp_path / "out")
    (tmp_path / "other.json").write_text('{"images": []}')
    with pytest.raises(ConfigError, match="not COCO detection JSON"):
        prepare_read(tmp_path / "other.json", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(InputNotFoundError, match="none of Pascal VOC"):
        detect_format(tmp_path / "empty")
    with pytest.raises(ConfigError, match="needs its class names"):
        prepare_read(tmp_path / "empty", tmp_path / "out", format="yolo")
