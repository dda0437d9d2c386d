"""Every bad-input case of VOC reading: skipped or corrected, counted, never a crash."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from facemask.cli import main
from facemask.core.errors import EmptyDatasetError
from facemask.data.augment import AugmentConfig
from facemask.data.pipeline import PrepareConfig, prepare
from facemask.data.synth import SynthFace, voc_xml
from facemask.data.voc import parse_annotation


def make_source(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    return root


def add_image(root: Path, name: str, size=(200, 150), fmt=None) -> Path:
    path = root / "images" / name
    Image.new("RGB", size, (120, 90, 60)).save(path, format=fmt)
    return path


def add_xml(root: Path, stem: str, text: str) -> Path:
    path = root / "annotations" / f"{stem}.xml"
    path.write_text(text)
    return path


def ok_xml(filename: str, size=(200, 150), boxes=(("with_mask", (10, 10, 60, 70)),)) -> str:
    return voc_xml(filename, *size, [SynthFace(label, box) for label, box in boxes])


def kinds(result) -> list[tuple[str, str]]:
    return [(p.kind, p.action) for p in result.problems]


def test_good_file_matches_png_name_to_jpg_by_stem(tmp_path):
    src = make_source(tmp_path)
    add_image(src, "a.jpg")
    xml = add_xml(src, "a", ok_xml("a.png"))
    result = parse_annotation(xml, src / "images")
    assert result.record is not None
    assert result.record.image.endswith("a.jpg")
    assert (result.record.width, result.record.height) == (200, 150)
    assert result.problems == []
    assert [(b.label, b.x1, b.y2) for b in result.record.boxes] == [("with_mask", 10.0, 70.0)]


def test_malformed_xml_is_skipped_with_reason(tmp_path):
    src = make_source(tmp_path)
    add_image(src, "a.png")
    xml = add_xml(src, "a", "<annotation><filename>a.png</filename><object>")
    result = parse_annotation(xml, src / "images")
    assert result.record is None
    assert kinds(result) == [("malformed_xml", "skipped_file")]
    assert "malformed XML" in result.problems[0].reason


def test_xml_without_image(tmp_path):
    src = make_source(tmp_path)
    xml = add_xml(src, "ghost", ok_xml("ghost.png"))
    result = parse_annotation(xml, src / "images")
    assert result.record is None
    assert kinds(result) == [("annotation_without_image", "skipped_file")]
    assert "ghost" in result.problems[0].reason


@pytest.mark.parametrize("with_ultralytics", [False, True])
@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_unreadable_image_is_skipped(tmp_path, damage, with_ultralytics, monkeypatch):
    if with_ultralytics:  # it patches PIL's Image.open, which changes what a bad file raises
        from ultralytics.utils import patches

        monkeypatch.setattr(Image, "open", patches.image_open)
    src = make_source(tmp_path)
    path = add_image(src, "a.jpg", size=(300, 300), fmt="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"this is not an image at all")
    result = parse_annotation(add_xml(src, "a", ok_xml("a.jpg")), src / "images")
    assert result.record is None
    assert kinds(result) == [("unreadable_image", "skipped_file")]
    assert result.problems[0].path.endswith("a.jpg")


def test_size_missing_or_wrong_trusts_the_image(tmp_path):
    src = make_source(tmp_path)
    add_image(src, "a.png", size=(200, 150))
    add_image(src, "b.png", size=(200, 150))
    missing = ok_xml("a.png").replace("<width>200</width>", "")
    wrong = ok_xml("b.png", size=(640, 480))
    ra = parse_annotation(add_xml(src, "a", missing), src / "images")
    rb = parse_annotation(add_xml(src, "b", wrong), src / "images")
    assert kinds(ra) == [("size_missing", "corrected")]
    assert kinds(rb) == [("size_mismatch", "corrected")]
    assert (rb.record.width, rb.record.height) == (200, 150)
    assert "640x480" in rb.problems[0].reason


def test_boxes_clipped_or_dropped(tmp_path):
    src = make_source(tmp_path)
    add_image(src, "a.png", size=(200, 150))
    boxes = (
        ("with_mask", (-5, 10, 250, 70)),  # out of bounds: clipped
        ("without_mask", (50, 50, 50, 90)),  # zero width: dropped
        ("without_mask", (80, 90, 60, 40)),  # negative: dropped
        ("mask_weared_incorrect", (210, 10, 260, 50)),  # wholly outside: dropped
    )
    result = parse_annotation(add_xml(src, "a", ok_xml("a.png", boxes=boxes)), src / "images")
    assert [(b.x1, b.y1, b.x2, b.y2) for b in result.record.boxes] == [(0.0, 10.0, 200.0, 70.0)]
    assert sorted(kinds(result)) == [("box_clipped", "corrected")] + [("empty_box", "dropped_box")] * 3


def test_unknown_class_dropped_and_difficult_kept(tmp_path):
    src = make_source(tmp_path)
    add_image(src, "a.png")
    text = ok_xml(
        "a.png",
        boxes=(
            ("with_mask", (10, 10, 50, 50)),
            ("face_shield", (60, 10, 100, 50)),
            ("without_mask", (110, 10, 150, 50)),
        ),
    )
    text = text.replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1)
    result = parse_annotation(add_xml(src, "a", text), src / "images")
    assert [b.label for b in result.record.boxes] == ["with_mask", "without_mask"]
    assert [b.difficult for b in result.record.boxes] == [True, False]
    assert kinds(result) == [("unknown_class", "dropped_box")]
    assert "face_shield" in result.problems[0].reason


def test_stray_text_inside_elements(tmp_path):
    """As in the Kaggle file maksssksksss0.xml: a loose line of text inside <object>."""
    src = make_source(tmp_path)
    add_image(src, "a.png")
    text = ok_xml("a.png").replace("<object>", "<object>\n        stray line of text\n", 1)
    text = text.replace("<xmin>10</xmin>", "<xmin>\n   10  </xmin>")
    result = parse_annotation(add_xml(src, "a", text), src / "images")
    assert result.problems == []
    assert result.record.boxes[0].x1 == 10.0


def test_prepare_counts_every_problem_and_orphans(tmp_path):
    src = make_source(tmp_path / "src")
    for i in range(12):
        add_image(src, f"good{i}.png")
        label = ("with_mask", "without_mask", "mask_weared_incorrect")[i % 3]
        add_xml(src, f"good{i}", ok_xml(f"good{i}.png", boxes=((label, (10, 10, 60, 70)),)))
    add_image(src, "orphan.png")
    add_xml(src, "broken", "<annotation>")
    add_xml(src, "ghost", ok_xml("ghost.png"))
    result = prepare(
        PrepareConfig(
            source=src, out=tmp_path / "out", engine="local", plots=False, augment=AugmentConfig(balance_ratio=0)
        )
    )
    problems = result.manifest["problems"]
    assert problems["counts"]["skipped_file"] == {
        "annotation_without_image": 1,
        "image_without_annotation": 1,
        "malformed_xml": 1,
    }
    assert problems["skipped_files"] == 3
    assert {p["path"] for p in problems["items"]} == {
        "images/orphan.png",
        "annotations/broken.xml",
        "annotations/ghost.xml",
    }
    total = sum(c["images"]["original"] for c in result.manifest["counts"].values())
    assert total == 12  # nothing valid lost


def test_empty_dataset_is_a_clear_error(tmp_path):
    src = make_source(tmp_path / "src")
    add_xml(src, "broken", "<annotation>")
    with pytest.raises(EmptyDatasetError, match="no usable image"):
        prepare(PrepareConfig(source=src, out=tmp_path / "out", engine="local"))
    run = CliRunner().invoke(
        main, ["data", "prepare", "--source", str(src), "--out", str(tmp_path / "o"), "--engine", "local"]
    )
    assert run.exit_code == 2
    assert "no usable image" in run.output


def test_missing_source_layout_is_a_clear_error(tmp_path):
    run = CliRunner().invoke(
        main, ["data", "prepare", "--source", str(tmp_path), "--out", str(tmp_path / "o"), "--engine", "local"]
    )
    assert run.exit_code == 2
    assert "annotations/" in run.output


def test_links_folders_and_huge_files_are_counted_not_fatal(tmp_path, monkeypatch):
    """A looping link, dangling links, a folder named like an image, an oversized file: one problem each."""
    import facemask.data.records as voc

    src = make_source(tmp_path / "src")
    for i in range(10):
        add_image(src, f"ok{i}.png")
        add_xml(src, f"ok{i}", ok_xml(f"ok{i}.png"))
    (src / "images" / "loop.png").symlink_to(src / "images" / "loop.png")
    add_xml(src, "loop", ok_xml("loop.png"))
    (src / "annotations" / "dangling.xml").symlink_to(src / "annotations" / "gone.xml")
    (src / "images" / "folder.jpg").mkdir()
    Image.effect_noise((200, 150), 80).convert("RGB").save(src / "images" / "huge.png")  # ~90 KB, the others < 1 KB
    add_xml(src, "huge", ok_xml("huge.png"))
    monkeypatch.setattr(voc, "MAX_FILE_BYTES", 20_000)
    result = parse_annotation(src / "annotations" / "huge.xml", src / "images")
    assert kinds(result) == [("unreadable_image", "skipped_file")] and "over the" in result.problems[0].reason
    monkeypatch.undo()
    prepared = prepare(
        PrepareConfig(
            source=src, out=tmp_path / "out", engine="local", plots=False, augment=AugmentConfig(balance_ratio=0)
        )
    )
    problems = prepared.manifest["problems"]
    by_path = {p["path"]: p for p in problems["items"]}
    assert by_path["annotations/dangling.xml"]["kind"] == "unreadable_annotation"
    assert "broken or looping link" in by_path["annotations/dangling.xml"]["reason"]
    assert by_path["annotations/loop.xml"]["kind"] == "annotation_without_image"
    assert "images/folder.jpg" in by_path and "images/loop.png" in by_path
    total = sum(c["images"]["original"] for c in prepared.manifest["counts"].values())
    assert total == 11  # the ten good images and huge.png (under the real limit): nothing valid lost
