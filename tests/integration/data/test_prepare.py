"""The whole preparation: leak-free, stratified, deterministic, same bytes from both engines."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from facemask.cli import main
from facemask.core.classes import CLASS_NAMES
from facemask.data.augment import AugmentConfig
from facemask.data.pipeline import PrepareConfig, prepare

pytestmark = pytest.mark.integration


def files(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file, data.yaml's absolute path left out."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "data.yaml":
                data = yaml.safe_dump({k: v for k, v in yaml.safe_load(data).items() if k != "path"}).encode()
            out[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def check_leak_free(source: Path, out: Path) -> None:
    """Val/test hold only unchanged originals; every pasted crop came from a train image."""
    splits = json.loads((out / "splits.json").read_text())
    train_sources = set(splits["train"])
    for split in ("val", "test"):
        images = sorted((out / "images" / split).iterdir())
        assert len(images) == len(splits[split])
        for image in images:
            assert not image.name.startswith("synthetic_")
            original = source / "images" / image.name
            assert image.read_bytes() == original.read_bytes(), f"{image} differs from its original"
    synthetic = [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]
    assert synthetic, "expected synthetic images in train"
    for item in synthetic:
        assert item["image"].startswith("images/train/synthetic_")
        assert item["background"] in train_sources
        for paste in item["pasted"]:
            assert paste["source_image"] in train_sources
    for split in ("val", "test"):
        assert not set(splits[split]) & train_sources


def test_engines_give_identical_files_and_fingerprints(synth_source, tmp_path, ray_local):
    common = dict(source=synth_source, seed=11, augment=AugmentConfig(blend="poisson"))
    local = prepare(PrepareConfig(out=tmp_path / "local", engine="local", **common))
    ray = prepare(PrepareConfig(out=tmp_path / "ray", engine="ray", **common))
    assert files(tmp_path / "local") == files(tmp_path / "ray")
    assert local.manifest == ray.manifest
    again = prepare(PrepareConfig(out=tmp_path / "local", engine="local", **common))
    assert again.manifest["fingerprint"] == local.manifest["fingerprint"]
    other_seed = prepare(PrepareConfig(out=tmp_path / "seed12", engine="local", **{**common, "seed": 12}))
    assert other_seed.manifest["fingerprint"] != local.manifest["fingerprint"]
    assert local.manifest["augment"]["pasted"], "nothing was pasted"
    check_leak_free(synth_source, tmp_path / "local")


def test_yolo_output_layout(synth_source, tmp_path):
    result = prepare(PrepareConfig(source=synth_source, out=tmp_path / "out", engine="local"))
    data = yaml.safe_load(result.data_yaml.read_text())
    assert Path(data["path"]).is_absolute()
    assert data["names"] == {0: "with_mask", 1: "without_mask", 2: "mask_weared_incorrect"}
    for split in ("train", "val", "test"):
        images = sorted(p.stem for p in (tmp_path / "out" / "images" / split).iterdir())
        labels = sorted(p.stem for p in (tmp_path / "out" / "labels" / split).iterdir())
        assert images == labels and images
        for label in (tmp_path / "out" / "labels" / split).iterdir():
            for line in label.read_text().splitlines():
                cls, *xywh = line.split()
                assert int(cls) in (0, 1, 2)
                assert all(0 <= float(v) <= 1 for v in xywh)
    assert (tmp_path / "out" / "class_distribution.png").stat().st_size > 0
    assert (tmp_path / "out" / "synthetic_samples.jpg").stat().st_size > 0


def test_cli_prepare_with_ray(synth_source, tmp_path, ray_local):
    run = CliRunner().invoke(
        main,
        [
            "data",
            "prepare",
            "--source",
            str(synth_source),
            "--out",
            str(tmp_path / "o"),
            "--pastes",
            "mask_weared_incorrect=12",
            "--blend",
            "overlay",
        ],
    )
    assert run.exit_code == 0, run.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["augment"]["planned"] == {"mask_weared_incorrect": 12}
    assert "fingerprint" in run.output


def test_synth_is_deterministic(tmp_path):
    from facemask.data.synth import synthesize

    a = synthesize(tmp_path / "a", images=5, seed=3)
    synthesize(tmp_path / "b", images=5, seed=3)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert sum(a.values()) > 0


def test_fetch_offline_names_the_alternatives(tmp_path):
    run = CliRunner().invoke(main, ["data", "fetch", "--out", str(tmp_path / "kaggle")])
    assert run.exit_code == 2
    assert "data synth" in run.output and "--source" in run.output
    assert len(run.output.strip().splitlines()) == 1


@pytest.mark.realdata
def test_real_data_stratified_leak_free_and_balanced(real_source, tmp_path):
    result = prepare(PrepareConfig(source=real_source, out=tmp_path / "real", engine="local", plots=False))
    counts = result.manifest["counts"]
    for split in ("train", "val", "test"):
        for cls in CLASS_NAMES:
            assert counts[split]["objects"][cls]["original"] > 0, (split, cls)
    images = {s: counts[s]["images"]["original"] for s in counts}
    assert sum(images.values()) == 683
    assert abs(images["train"] / 683 - 0.7) < 0.01 and abs(images["val"] / 683 - 0.2) < 0.01
    augment = result.manifest["augment"]
    for cls in ("without_mask", "mask_weared_incorrect"):
        before = augment["train_counts"][cls]
        after = before + augment["pasted"][cls]
        # raised toward the target: at least 80% of the way there
        assert after - before >= 0.8 * (augment["target_counts"][cls] - before), cls
    assert result.manifest["problems"]["skipped_files"] == 0
    check_leak_free(real_source, tmp_path / "real")
